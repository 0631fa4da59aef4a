"""The library's INFO lines (the trainer's progress line) reach the terminal of a flow run, once."""

from __future__ import annotations

import logging

from flows.pipeline import show_library_progress


def test_library_info_lines_are_printed_once_and_warnings_left_to_the_root(capfd):
    lib = logging.getLogger("mert")
    saved_level, saved_handlers = lib.level, list(lib.handlers)
    try:
        show_library_progress()
        show_library_progress()  # idempotent: one handler
        ours = [h for h in lib.handlers if getattr(h, "_mert_progress", False)]
        assert len(ours) == 1
        logging.getLogger("mert.train.trainer").info("step 100/1800 (5%%): loss %.3f", 1.5)
        logging.getLogger("mert.train.diagnostics").warning("a collapse warning")
        err = capfd.readouterr().err
        assert err.count("step 100/1800 (5%): loss 1.500") == 1
        assert "| INFO    | mert.train.trainer - step 100/1800" in err
        assert not ours[0].filter(logging.makeLogRecord({"levelno": logging.WARNING, "msg": "w"}))
    finally:
        lib.setLevel(saved_level)
        lib.handlers[:] = saved_handlers
