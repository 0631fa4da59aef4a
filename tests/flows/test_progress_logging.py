"""The library's INFO lines (the trainer's progress line) reach the terminal of a flow run, once."""

from __future__ import annotations

import logging

import pytest

from flows.pipeline import show_library_progress


@pytest.fixture
def library_logger():
    lib, root = logging.getLogger("mert"), logging.getLogger()
    saved = lib.level, list(lib.handlers), list(root.handlers), root.level
    yield lib
    lib.setLevel(saved[0])
    lib.handlers[:] = saved[1]
    root.handlers[:] = saved[2]
    root.setLevel(saved[3])


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=0)  # as Prefect's console handler: no level of its own
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_info_lines_reach_the_roots_handler_once(library_logger):
    root = logging.getLogger()
    console = Collect()
    root.handlers[:] = [console]
    root.setLevel(logging.WARNING)  # Prefect's default: the root at WARNING
    library_logger.setLevel(logging.NOTSET)
    log = logging.getLogger("mert.train.trainer")
    log.info("step 1/9: before")
    assert console.lines == []  # dropped: what a flow run printed before
    show_library_progress()
    show_library_progress()  # idempotent
    log.info("step 100/1800 (5%%): loss %.3f", 1.5)
    log.warning("a warning")
    assert console.lines == ["step 100/1800 (5%): loss 1.500", "a warning"]  # each once
    assert not [h for h in library_logger.handlers if getattr(h, "_mert_progress", False)]


def test_without_any_root_handler_one_is_added(library_logger, capfd):
    logging.getLogger().handlers[:] = []
    library_logger.setLevel(logging.NOTSET)
    show_library_progress()
    show_library_progress()
    assert len([h for h in library_logger.handlers if getattr(h, "_mert_progress", False)]) == 1
    logging.getLogger("mert.train.trainer").info("step 2/9")
    assert capfd.readouterr().err.count("| INFO    | mert.train.trainer - step 2/9") == 1
