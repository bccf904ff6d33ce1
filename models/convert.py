"""Official SAM-DETR checkpoints (github.com/ZhangGongjie/SAM-DETR) <-> this package's state dicts.

    checkpoint = torch.load("SAM-DETR-R50-SMCA.pth", map_location="cpu", weights_only=False)
    cfg = DetectorConfig(smca=True, input_proj_groupnorm=True)
    model, criterion, postprocess = build(cfg)
    model.load_state_dict(convert_official_state_dict(checkpoint["model"], cfg))   # strict

The layouts differ only in names: the official decoder shares its box heads with the detector (so they appear
twice), wraps the input projection and the backbone in one more container, and names the aligner's layers
point1/point2/attn1/attn2.
"""
import torch

# (official name part, our name part, only in decoder layers), applied to every key containing the official part
_RENAMES = [
    ("backbone.0.body.", "backbone.body.", False),
    ("input_proj.0.", "input_proj.", False),
    (".self_attn.out_proj.", ".self_attn_out_proj.", True),   # the encoder keeps nn.MultiheadAttention's name
    (".cross_attn.out_proj.", ".cross_attn_out_proj.", True),
    (".point1.", ".aligner.point_conv.", True),
    (".point2.", ".aligner.point_mlp.", True),
    (".attn1.", ".aligner.reweight_query.", True),
    (".attn2.", ".aligner.reweight_pos.", True),
]
_SHARED_BOX_HEADS = "transformer.decoder.bbox_embed."   # official duplicate of "bbox_embed."


def _rename(key, renames):
    for old, new, decoder_only in renames:
        if old in key and (not decoder_only or key.startswith("transformer.decoder.layers.")):
            return key.replace(old, new, 1)
    return key


def convert_official_state_dict(state_dict, cfg):
    """Official `checkpoint["model"]` (a checkpoint dict with a "model" entry is accepted too) -> a state dict
    that `build(cfg)[0].load_state_dict(...)` loads strictly. Raises ValueError when the checkpoint's variant
    (input_proj GroupNorm, SMCA) does not match cfg."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    has_groupnorm = "input_proj.0.1.weight" in state_dict
    if has_groupnorm != cfg.input_proj_groupnorm:
        raise ValueError(f"convert_official_state_dict: the checkpoint {'has' if has_groupnorm else 'has no'} "
                         f"GroupNorm in input_proj; build with DetectorConfig(input_proj_groupnorm={has_groupnorm})")
    point_outputs = state_dict["transformer.decoder.layers.0.point2.6.bias"].shape[0]
    is_smca = point_outputs == 4 * cfg.nheads
    if is_smca != cfg.smca:
        raise ValueError(f"convert_official_state_dict: the checkpoint's point predictor has {point_outputs} "
                         f"outputs for {cfg.nheads} heads; build with DetectorConfig(smca={is_smca})")
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(_SHARED_BOX_HEADS):
            shared = "bbox_embed." + key[len(_SHARED_BOX_HEADS):]
            if not torch.equal(value, state_dict[shared]):
                raise ValueError(f"convert_official_state_dict: {key} differs from {shared}; the official model "
                                 "shares them")
            continue
        converted[_rename(key, _RENAMES)] = value
    return converted


def to_official_state_dict(state_dict):
    """The inverse: our state dict -> the official layout (box heads written twice, as the official model
    saves them). For comparisons with the official code."""
    inverse = [(new, old, decoder_only) for old, new, decoder_only in _RENAMES]
    official = {_rename(key, inverse): value for key, value in state_dict.items()}
    official.update({_SHARED_BOX_HEADS + key[len("bbox_embed."):]: value
                     for key, value in state_dict.items() if key.startswith("bbox_embed.")})
    return official
