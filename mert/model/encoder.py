"""The MERT encoder in plain PyTorch, state-dict compatible with the released HF checkpoints.

MERT (Li et al. 2023, arXiv:2306.00107) reuses the HuBERT encoder (Hsu et al. 2021, arXiv:2106.07447), itself
the wav2vec 2.0 architecture (Baevski et al. 2020, arXiv:2006.11477): a 7-layer conv feature extractor (total
stride 320, GroupNorm over the whole clip on layer 0), a LayerNorm + linear feature projection, a grouped
positional conv with weight norm, and a transformer in either the post-LN (MERT-v1-95M) or the pre-LN
(MERT-v1-330M) layout. Module and parameter names mirror ``transformers.HubertModel`` exactly, so
``state_dict()`` keys are the keys of the released ``pytorch_model.bin``.

Differences from the HF code that do not change the maths: q/k/v are fused into one matmul at compute time
(stored separately), attention runs through ``F.scaled_dot_product_attention`` (all its backends reduce the
softmax in fp32 for fp16/bf16 inputs), the weight norm is computed explicitly from plain ``weight_g``/``weight_v``
parameters (stable keys across torch versions), and without autograd (inference) the conv stack streams over
time with layer 0's GroupNorm folded into its weights and GELUs applied in place (see :class:`FeatureExtractor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mert.model.config import MERTConfig
from mert.model.inputs import NORM_EPS, check_waveform, clip_lengths, frame_mask, normalize_padded


@dataclass
class MERTOutput:
    """What :class:`MERT` returns.

    Attributes:
        last_hidden_state: (B, T, D) final encoder output (after the final LayerNorm in the pre-LN layout).
        hidden_states: ``num_hidden_layers + 1`` tensors (B, T, D) with the released semantics (post-LN: the
            normalised input then each layer's output; pre-LN: the un-normalised input and residual stream, the
            last entry normalised, equal to ``last_hidden_state``), or None unless requested.
        features: (B, T, C) conv features before the feature projection (after the gradient scaling), for
            the ``mean(features**2)`` penalty.
        frame_mask: (B, T) bool, True on each clip's own frames, when the call had an ``attention_mask`` with
            padding (the frames past each clip's end are zero in every tensor above); None otherwise.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None
    features: Tensor
    frame_mask: Tensor | None = None


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` backward (fairseq's ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def normalize_waveform(wav: Tensor) -> Tensor:
    """Per-clip ``(x - mean) / sqrt(var + 1e-7)`` (population variance), as ``Wav2Vec2FeatureExtractor``.

    Args:
        wav: (B, L) audio.

    Returns:
        (B, L) normalised audio.
    """
    mean = wav.mean(dim=-1, keepdim=True)
    var = wav.var(dim=-1, keepdim=True, correction=0)
    return (wav - mean) / torch.sqrt(var + NORM_EPS)


# ---------------------------------------------------------------------------------------------- front end
def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU, in place when no autograd graph is being recorded (saves a full-size allocation)."""
    return F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)


class ConvLayer(nn.Module):
    """Conv1d -> [GroupNorm(C groups), layer 0 only] -> GELU. Holds ``conv`` and optional ``layer_norm``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True) if group_norm else None

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """(B, C_in, L) -> (B, C_out, T); ``valid`` (B,) counts each clip's own output frames (layer 0 only)."""
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x) if valid is None else self._masked_group_norm(x, valid)
        return gelu(x)

    def _masked_group_norm(self, x: Tensor, valid: Tensor) -> Tensor:
        """GroupNorm(C groups) with each clip's statistics over its first ``valid[b]`` frames only: (B, C, T)."""
        m = (torch.arange(x.shape[-1], device=x.device)[None] < valid[:, None])[:, None]  # (B, 1, T)
        n = valid[:, None, None].to(x.dtype)
        mean = torch.where(m, x, 0).sum(-1, keepdim=True) / n  # (B, C, 1)
        var = torch.where(m, x - mean, 0).pow(2).sum(-1, keepdim=True) / n
        gn = self.layer_norm
        return (x - mean) / torch.sqrt(var + gn.eps) * gn.weight[:, None] + gn.bias[:, None]

    def groupnorm_folded(self, wav: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fold layer 0's whole-clip GroupNorm into per-clip conv weights, without running the conv.

        The conv is linear in the waveform frames f_t (k samples each), so channel c's mean over time is
        ``w_c . mu`` and its variance ``w_c^T Sigma w_c``, with mu and Sigma the mean and covariance of the
        frames (k x k, in float64). ``GroupNorm(conv(x))`` is then a conv with weights ``scale_c * w_c`` and
        bias ``beta_c - scale_c * w_c . mu`` (the conv bias cancels), which can run on any stretch of the clip.

        Args:
            wav: (B, L) audio, the whole clip.
            valid: optional (B,) number of each clip's own layer-0 frames (a right-padded batch): the statistics
                are then taken over those frames only, as for the clip alone.

        Returns:
            ``(weight, bias)`` of shapes (B, C, k) and (B, C), in ``wav``'s dtype.
        """
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        frames = wav.unfold(1, k, s).double()  # (B, T0, k)
        if valid is None:
            n = torch.full((wav.shape[0], 1), frames.shape[1], dtype=frames.dtype, device=wav.device)
        else:
            keep = torch.arange(frames.shape[1], device=wav.device)[None] < valid[:, None]  # (B, T0)
            frames = frames * keep[..., None]
            n = valid[:, None].to(frames.dtype)  # (B, 1)
        mu = frames.sum(dim=1) / n  # (B, k)
        centred = frames - mu[:, None]
        if valid is not None:
            centred = centred * keep[..., None]
        cov = centred.transpose(1, 2) @ centred / n[:, :, None]  # (B, k, k)
        w = self.conv.weight[:, 0].double()  # (C, k)
        var = torch.einsum("ck,bkj,cj->bc", w, cov, w)  # (B, C)
        scale = self.layer_norm.weight.double() / torch.sqrt(var + self.layer_norm.eps)  # (B, C)
        weight = (scale[:, :, None] * w).to(wav.dtype)  # (B, C, k)
        bias = (self.layer_norm.bias.double() - scale * (mu @ w.T)).to(wav.dtype)  # (B, C)
        return weight, bias

    def forward_folded(self, wav: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Layer 0 on a stretch of the clip with folded GroupNorm weights: (B, L') -> (B, C, T')."""
        frames = wav.unfold(1, self.conv.kernel_size[0], self.conv.stride[0])  # (B, T', k) view
        return gelu(torch.baddbmm(bias[:, :, None], weight, frames.transpose(1, 2)))  # (B, C, T')


class FeatureExtractor(nn.Module):
    """The 7-layer conv stack: (B, L) waveform -> (B, T, C) features (``feature_extractor.conv_layers.*``).

    Without autograd, a batch whose layer-0 activation would exceed ``stream_budget_mib`` streams over time (a
    shorter one runs as in training, the whole clip at once): layer 0's GroupNorm is folded into per-clip conv weights
    (whole-clip statistics, see :meth:`ConvLayer.groupnorm_folded`), then stretches of output frames run
    through all seven layers from their own receptive field. The convs are local, so the frames are those of
    the whole-clip pass, while the large early activations (the (B, 512, L/5) layer-0 output is ~49 MB per
    5 s clip) never exist in full beyond ``stream_budget_mib``: the peak no longer grows with the clip.
    Fewer, longer stretches are faster (bigger GEMMs, fewer thread barriers), hence a budget, not a size.
    """

    stream_budget_mib = 64
    """Largest layer-0 activation (B, C, t0) held at once on the no-grad path: a batch whose whole layer-0 activation
    fits runs the conv stack as training does (25% faster on short clips than streaming it), a longer one streams."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        dims = (1, *cfg.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], k, s, cfg.conv_bias, group_norm=i == 0)
            for i, (k, s) in enumerate(zip(cfg.conv_kernel, cfg.conv_stride))
        )
        self.config = cfg

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, L) -> (B, T, C). ``lengths`` (B,): each clip's samples in a right-padded batch (layer 0's GroupNorm
        then uses each clip's own samples only); the frames past a clip's end are left for the caller to mask.
        """
        valid = None
        if lengths is not None:
            k, s = self.config.conv_kernel[0], self.config.conv_stride[0]
            valid = torch.div(lengths - k, s, rounding_mode="floor") + 1  # (B,) layer-0 frames of each clip
        cfg = self.config
        layer0 = wav.shape[0] * cfg.conv_dim[0] * (wav.shape[1] // cfg.conv_stride[0]) * wav.element_size()
        if not torch.is_grad_enabled() and layer0 > self.stream_budget_mib * 2**20:
            return self._forward_streaming(wav, valid)  # long audio: bounded memory
        x = wav[:, None]  # (B, 1, L)
        x = self.conv_layers[0](x, valid)
        for layer in self.conv_layers[1:]:
            x = layer(x)
        return x.transpose(1, 2)  # (B, T, C)

    def _forward_streaming(self, wav: Tensor, valid: Tensor | None = None) -> Tensor:
        cfg, first = self.config, self.conv_layers[0]
        n_frames, hop, rf = cfg.num_frames(wav.shape[1]), cfg.total_stride, cfg.receptive_field
        weight, bias = first.groupnorm_folded(wav, valid)
        per_frame = wav.shape[0] * cfg.conv_dim[0] * (hop // cfg.conv_stride[0]) * wav.element_size()
        step = max(8, int(self.stream_budget_mib * 2**20 // per_frame))  # output frames per stretch
        out = wav.new_empty(wav.shape[0], n_frames, cfg.conv_dim[-1])  # (B, T, C)
        for a in range(0, n_frames, step):
            n = min(step, n_frames - a)
            x = first.forward_folded(wav[:, a * hop : (a + n - 1) * hop + rf], weight, bias)  # (B, C, t0)
            for layer in self.conv_layers[1:]:
                x = layer(x)
            out[:, a : a + n] = x.transpose(1, 2)  # (B, n, C)
        return out


class FeatureProjection(nn.Module):
    """LayerNorm(C) -> Linear(C, D) -> dropout (``feature_projection.*``)."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, D)."""
        return self.dropout(self.projection(self.layer_norm(x)))


# ---------------------------------------------------------------------------------------------- encoder
class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``g * v / ||v||`` (norm over all dims but the kernel axis, dim=2).

    The parameters are plain ``weight_g`` (1, 1, K) and ``weight_v`` (D, D/G, K), the released key names,
    instead of a ``torch.nn.utils`` parametrization whose key names changed across torch versions.
    """

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))

    @property
    def weight(self) -> Tensor:
        """(D, D/G, K) effective weight."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T + 1 - K % 2)."""
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """Grouped weight-normed conv, drop the last frame for even K ("same" padding), GELU."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = WeightNormConv1d(cfg.hidden_size, k, cfg.num_conv_pos_embedding_groups)
        self.num_pad_remove = 1 if k % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        y = self.conv(x.transpose(1, 2))  # (B, D, T + 1)
        y = y[:, :, : y.shape[-1] - self.num_pad_remove]  # (B, D, T)
        return gelu(y).transpose(1, 2)  # (B, T, D)


class Attention(nn.Module):
    """Multi-head self-attention with separate stored q/k/v/out projections, fused at compute time."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.head_dim, self.dropout = cfg.num_attention_heads, cfg.head_dim, cfg.attention_dropout
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D). The softmax scale is ``head_dim**-0.5`` (SDPA's default).

        ``keep``: optional (B, T) bool; keys where it is False (padding) get no attention weight.
        """
        b, t, d = x.shape
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3D, D)
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])  # (3D,)
        qkv = F.linear(x, w, bias).view(b, t, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, T) broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(y)


class FeedForward(nn.Module):
    """Linear(D, F) -> exact GELU -> dropout -> Linear(F, D) -> dropout (``feed_forward.*``)."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(cfg.activation_dropout)
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        x = self.intermediate_dropout(gelu(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """One transformer layer, post-LN ``LN(x*a + f(x))`` (a = DeepNorm alpha or 1) or pre-LN ``x + f(LN(x))``."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pre_ln = cfg.do_stable_layer_norm
        self.alpha = (2.0 * cfg.num_hidden_layers) ** 0.25 if cfg.deepnorm else 1.0

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D); ``keep`` (B, T) masks padded keys out of the attention."""
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.layer_norm(x), keep))
            return x + self.feed_forward(self.final_layer_norm(x))
        res = x * self.alpha if self.alpha != 1.0 else x
        x = self.layer_norm(res + self.dropout(self.attention(x, keep)))
        res = x * self.alpha if self.alpha != 1.0 else x
        return self.final_layer_norm(res + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional conv + transformer layers (``encoder.*``), in the layout ``cfg.do_stable_layer_norm`` picks."""

    def __init__(self, cfg: MERTConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pre_ln, self.layerdrop = cfg.do_stable_layer_norm, cfg.layerdrop

    def forward(
        self, x: Tensor, output_hidden_states: bool = False, keep: Tensor | None = None, output_layer: int | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """(B, T, D) -> ((B, T, D) last state, hidden states or None). See :class:`MERTOutput`.

        ``keep``: optional (B, T) bool of each clip's own frames. As ``HubertEncoder`` does, padded frames are
        zeroed before the positional conv (so it sees what it sees past the end of the clip alone: zeros) and
        masked out of every attention.

        ``output_layer``: stop after that many layers (fairseq's ``extract_features(output_layer=L)``); the states
        returned are then the first ``L + 1`` of the full pass, and the last state is hidden state ``L`` (for
        ``L < num_hidden_layers`` the pre-LN layout's final LayerNorm is not applied, as in the full pass).
        """
        if keep is not None:
            x = x.masked_fill(~keep[..., None], 0.0)
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x] if output_hidden_states else None
        layers = self.layers if output_layer is None else self.layers[:output_layer]
        for layer in layers:
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, keep)
            if states is not None:
                states.append(x)
        if self.pre_ln and len(layers) == len(self.layers):
            x = self.layer_norm(x)
            if states is not None:
                states[-1] = x
        return x, tuple(states) if states is not None else None


# ---------------------------------------------------------------------------------------------- model
class MERT(nn.Module):
    """The MERT encoder (what the released checkpoints hold). Pretraining heads wrap it elsewhere.

    Example:
        >>> model = MERT(MERTConfig.from_name("mert-tiny")).eval()
        >>> out = model(torch.randn(2, 24000), output_hidden_states=True)
        >>> len(out.hidden_states), out.last_hidden_state.shape
        (3, torch.Size([2, 74, 32]))
    """

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.config = config
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.feature_extractor = FeatureExtractor(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)
        self.reset_parameters()
        for layer in self.feature_extractor.conv_layers[: config.conv_frozen_layers]:
            layer.requires_grad_(False)  # kept at their initial weights: no gradient, no backward through them

    def forward(
        self,
        wav: Tensor | None = None,
        mask: Tensor | None = None,
        output_hidden_states: bool = False,
        *,
        input_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        output_layer: int | None = None,
    ) -> MERTOutput:
        """Encode a batch of clips, equal-length or right-padded (the HF call style).

        ``model(wav)`` and ``model(input_values=x, attention_mask=m, output_hidden_states=True)`` (what HF MERT
        code and ``Wav2Vec2FeatureExtractor(..., padding=True)`` produce) are both accepted; the input is checked
        before any compute (:func:`mert.model.inputs.check_waveform`).

        Args:
            wav: (B, L) float mono audio at ``config.sample_rate``, L >= ``config.receptive_field`` (400).
            mask: optional (B, T) bool; True frames of the projected features are replaced by
                ``masked_spec_embed`` before the positional conv. T must be ``config.num_frames(L)``.
            output_hidden_states: also return every layer's output.
            input_values: the HF name of ``wav`` (give one of the two).
            attention_mask: optional (B, L) 1/True on each clip's samples, 0/False on its right padding. Each
                clip is then encoded as if alone, up to float rounding: per-clip normalisation and layer 0's
                GroupNorm use its own samples, the positional conv sees zeros past its end, attention ignores
                padded frames, and its frames past ``config.num_frames(length)`` are zero in the output
                (``frame_mask`` says which are valid). ``transformers.HubertModel`` differs on group-norm
                models: its GroupNorm spans the padding too (see docs/model.md).
            output_layer: compute only up to hidden state ``output_layer`` (0..``num_hidden_layers``), as
                fairseq's ``extract_features(output_layer=...)`` does for HuBERT's k-means features: the layers
                above it are skipped, ``hidden_states`` has ``output_layer + 1`` entries equal to the full pass's
                first ones, and ``last_hidden_state`` is ``hidden_states[output_layer]``.

        Returns:
            :class:`MERTOutput` with tensors of T = ``config.num_frames(L)`` frames: ``last_hidden_state``
            (B, T, D), ``hidden_states`` ``num_hidden_layers + 1`` x (B, T, D), ``features`` (B, T, C).

        Raises:
            ValueError: a wrong input layout or length, a bad ``attention_mask`` or ``mask`` (nothing is computed).
        """
        if input_values is not None and wav is not None:
            raise ValueError("pass the audio once: wav or input_values, not both")
        wav = check_waveform(wav if input_values is None else input_values, self.config)
        lengths = clip_lengths(attention_mask, wav, self.config)  # None: nothing padded
        n_frames = self.config.num_frames(wav.shape[1])
        if mask is not None and tuple(mask.shape) != (wav.shape[0], n_frames):
            raise ValueError(f"mask shape {tuple(mask.shape)} != (batch, frames) {(wav.shape[0], n_frames)}")
        n_layers = self.config.num_hidden_layers
        if output_layer is not None and (isinstance(output_layer, bool) or not 0 <= output_layer <= n_layers):
            raise ValueError(f"output_layer {output_layer!r} is not a hidden-state index in 0..{n_layers}")
        if self.config.do_normalize:
            wav = normalize_waveform(wav) if lengths is None else normalize_padded(wav, lengths)
        features = self._features(wav, lengths)  # (B, T, C)
        x = self.feature_projection(features)  # (B, T, D)
        if mask is not None:
            x = torch.where(mask[..., None], self.masked_spec_embed.to(x.dtype), x)
        keep = None if lengths is None else frame_mask(lengths, self.config, n_frames)  # (B, T)
        last, states = self.encoder(x, output_hidden_states, keep, output_layer)
        if keep is None:
            return MERTOutput(last_hidden_state=last, hidden_states=states, features=features)
        pad = ~keep[..., None]  # (B, T, 1): frames past each clip's end
        states = None if states is None else tuple(h.masked_fill(pad, 0.0) for h in states)
        return MERTOutput(last.masked_fill(pad, 0.0), states, features.masked_fill(pad, 0.0), frame_mask=keep)

    def _features(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Conv features with fairseq's gradient handling: scaled by ``feature_grad_mult``, or frozen at 0."""
        mult = self.config.feature_grad_mult
        if mult <= 0:
            with torch.no_grad():
                return self.feature_extractor(wav, lengths)
        features = self.feature_extractor(wav, lengths)
        if mult != 1.0 and self.training and features.requires_grad:
            features = GradMultiply.apply(features, mult)
        return features

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (``masked_spec_embed`` included)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """fairseq/HF initialisation (BERT normal(0.02) linears, Kaiming convs), plus DeepNorm's beta scaling."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        pos = self.encoder.pos_conv_embed.conv
        k, d = pos.weight_v.shape[-1], self.config.hidden_size
        nn.init.normal_(pos.weight_v, std=math.sqrt(4.0 / (k * d)))  # fairseq wav2vec2 TransformerEncoder
        pos.weight_g.copy_(pos.weight_v.norm(dim=(0, 1), keepdim=True))  # so that w == v at init
        nn.init.zeros_(pos.bias)
        nn.init.uniform_(self.masked_spec_embed)
        if self.config.deepnorm:
            self._deepnorm_init()

    def _deepnorm_init(self) -> None:
        """Divide fc1/fc2/out_proj/v_proj parameters by beta^-1 = (8N)^(1/4) (MERT ``mert_model.py``)."""
        scale = (8.0 * self.config.num_hidden_layers) ** 0.25
        names = ("intermediate_dense", "output_dense", "out_proj", "v_proj")  # fc1, fc2, out_proj, v_proj
        for name, p in self.encoder.layers.named_parameters():
            if any(n in name for n in names):
                p.div_(scale)

    # ------------------------------------------------------------------ released HF layout (mert/model/hf.py)
    @classmethod
    def from_pretrained(cls, path, **kwargs) -> MERT:
        """Load the released ``m-a-p/MERT-v1-*`` layout from a directory or a hub id (``m-a-p/MERT-v1-95M``);
        see :func:`mert.model.hf.from_pretrained` (``revision``, ``cache_dir``, ``do_normalize``, ``dtype``,
        ``device``).
        """
        from mert.model.hf import from_pretrained

        return from_pretrained(path, **kwargs)

    def save_pretrained(self, directory, **kwargs) -> None:
        """Write the released layout; see :func:`mert.model.hf.save_pretrained`."""
        from mert.model.hf import save_pretrained

        save_pretrained(self, directory, **kwargs)
