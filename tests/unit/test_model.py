"""The embedding model: shapes, normalisation, torchvision compatibility, checkpoint IO."""
from __future__ import annotations

import pytest
import torch

from engine.contract import ContractError, ModelConfig
from nets.checkpoint import load_model, save_model
from nets.model import (available_models, feature_map_size, get_model,
                            load_torchvision_backbone)

TINY = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16)

# Parameter counts of torchvision's resnet18/34/50 minus their ImageNet fc layer.
TORCHVISION_TRUNK_PARAMS = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                            "resnet50": 25_557_032 - 2_049_000}


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_embeddings_have_contract_shape_and_unit_norm(arch):
    model = get_model(ModelConfig(arch=arch, input_size=32, embedding_dim=24)).eval()
    with torch.no_grad():
        emb = model(_images(3, 32))
    assert emb.shape == (3, 24)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_TRUNK_PARAMS))
def test_backbone_matches_torchvision_parameter_count(arch):
    backbone = get_model(ModelConfig(arch=arch, input_size=32, embedding_dim=8)).backbone
    assert sum(p.numel() for p in backbone.parameters()) == TORCHVISION_TRUNK_PARAMS[arch]


def test_registry_lists_and_rejects():
    assert {"resnet18", "resnet34", "resnet50", "dlib_resnet29"} <= set(available_models())
    assert get_model("resnet34").config.arch == "resnet34"
    with pytest.raises(ValueError, match="unknown arch"):
        get_model(ModelConfig(arch="resnet7", input_size=32))


@pytest.mark.parametrize("size,side", [(32, 1), (112, 4), (224, 7)])
def test_feature_map_size_matches_the_trunk(size, side):
    assert feature_map_size(size) == side
    model = get_model(ModelConfig(arch="resnet18", input_size=size, embedding_dim=8)).eval()
    with torch.no_grad():
        out = model.backbone(model.normalise(_images(1, size)))
    assert out.shape[-2:] == (side, side)


def test_input_size_224_supported():
    model = get_model(ModelConfig(arch="resnet18", input_size=224, embedding_dim=8)).eval()
    with torch.no_grad():
        assert model(_images(1, 224)).shape == (1, 8)


def test_normalisation_maps_uint8_to_unit_range_and_keeps_channels_last():
    model = get_model(TINY)
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 32, 32, 3).contiguous()
    out = model.normalise(x)
    assert out.shape == (2, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(out[0] == -1.0) and torch.all(out[1] == 1.0)


def test_channels_last_model_gives_same_embeddings():
    model = get_model(TINY).eval()
    images = _images(4, 32)
    with torch.no_grad():
        ref = model(images)
        model = model.to(memory_format=torch.channels_last)
        assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = model(images)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_loads_torchvision_format_state_dict():
    source = get_model(ModelConfig(arch="resnet34", input_size=32, embedding_dim=8))
    # torchvision's keys: the trunk's plus fc.*, possibly saved from a DataParallel ("module.").
    state = {f"module.{k}": v.clone() + 0.5 for k, v in source.backbone.state_dict().items()
             if v.dtype.is_floating_point}
    state["module.fc.weight"] = torch.zeros(1000, 512)
    state["module.fc.bias"] = torch.zeros(1000)
    target = get_model(ModelConfig(arch="resnet34", input_size=32, embedding_dim=8))
    report = load_torchvision_backbone(target, state)
    assert report["unexpected"] == []
    assert all(k.endswith("num_batches_tracked") for k in report["missing"])
    torch.testing.assert_close(target.backbone.layer3[5].conv2.weight, source.backbone.layer3[5].conv2.weight + 0.5)
    assert "layer4.2.bn2.running_var" in target.backbone.state_dict()


def test_rejects_state_dict_of_another_network():
    with pytest.raises(ValueError, match="not a torchvision-format ResNet"):
        load_torchvision_backbone(get_model(TINY), {"encoder.weight": torch.zeros(3)})


def test_checkpoint_round_trip(tmp_path):
    model = get_model(TINY)
    model.train()
    model(_images(8, 32))  # move BN running statistics away from their init
    save_model(model, tmp_path, ModelConfig(**{**TINY.to_dict(), "threshold": 0.42}))
    loaded = load_model(tmp_path)
    assert loaded.config.threshold == 0.42
    assert not loaded.training
    images = _images(2, 32, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images), rtol=0, atol=0)


def test_checkpoint_mismatch_is_a_contract_error(tmp_path):
    save_model(get_model(TINY), tmp_path)
    ModelConfig(arch="resnet18", input_size=32, embedding_dim=32).save(tmp_path / "model.json")
    with pytest.raises(ContractError, match="does not match"):
        load_model(tmp_path)


REALNESS = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16, realness_weight=1.0)


def test_realness_coordinate_is_the_last_output_and_keeps_the_contract():
    model = get_model(REALNESS).eval()
    with torch.no_grad():
        identity, logit = model.parts(_images(4, 32))
        emb = model(_images(4, 32))
    assert identity.shape == (4, 15) and logit.shape == (4,)
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4), rtol=0, atol=1e-5)
    t = torch.clamp(torch.tanh(0.5 * logit), max=0.0)
    torch.testing.assert_close(emb[:, -1], t / torch.sqrt(1 + t ** 2), rtol=0, atol=1e-5)


def test_realness_separates_a_fake_from_the_same_identity():
    """Same identity vector: two reals score 1, a real and a fake 1 / sqrt(1 + a^2)."""
    a = 3.0
    model = get_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=4, realness_weight=a))
    identity = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 2.0]] * 3), dim=1)
    emb = model.combine(identity, torch.tensor([40.0, 40.0, -40.0]))  # real, real, fake
    cos = emb @ emb.t()
    assert cos[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert cos[0, 2].item() == pytest.approx(1 / (1 + a * a) ** 0.5, abs=1e-6)


@pytest.mark.parametrize("logits", [(40.0, 40.0), (0.01, 3.0), (40.0, 0.0)])
def test_realness_never_moves_the_similarity_of_two_real_looking_faces(logits):
    """A logit at or above -bias is 'looks real': the coordinate is exactly 0, and the pair
    scores exactly its identity cosine (the realness head cannot cost identity accuracy there)."""
    model = get_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=4, realness_weight=3.0))
    pair = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 2.0], [2.0, -1.0, 0.5]]), dim=1)
    emb = model.combine(pair, torch.tensor(logits))
    assert emb[:, -1].abs().max().item() == 0.0
    assert (emb[0] @ emb[1]).item() == pytest.approx((pair[0] @ pair[1]).item(), abs=1e-7)


def test_realness_scale_and_bias_come_from_the_config_or_the_call():
    """Calibration moves the logit's operating point: t = min(0, tanh(scale * (logit + bias)))."""
    model = get_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=4, realness_weight=2.0,
                                  realness_scale=1.5, realness_bias=-0.5))
    identity = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 2.0]] * 3), dim=1)
    logit = torch.tensor([0.3, -1.2, 0.9])
    t = torch.clamp(torch.tanh(1.5 * (logit - 0.5)), max=0.0)
    assert t[2].item() == 0.0 and t[0].item() < 0  # 0.9 - 0.5 > 0 looks real; 0.3 - 0.5 < 0 does not
    torch.testing.assert_close(model.combine(identity, logit)[:, -1], 2 * t / torch.sqrt(1 + 4 * t * t))
    t = torch.clamp(torch.tanh(0.5 * (logit + 1.0)), max=0.0)  # the call's values win over the config's
    torch.testing.assert_close(model.combine(identity, logit, 1.0, 0.5, 1.0)[:, -1], t / torch.sqrt(1 + t * t))


def test_realness_weight_is_validated():
    with pytest.raises(ContractError, match="realness_weight"):
        ModelConfig(realness_weight=-1.0)
    with pytest.raises(ContractError, match="embedding_dim >= 2"):
        ModelConfig(embedding_dim=1, realness_weight=1.0)
    with pytest.raises(ContractError, match="realness_scale must be > 0"):
        ModelConfig(realness_scale=0.0)


def test_realness_checkpoint_round_trip(tmp_path):
    model = get_model(REALNESS).eval()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config.realness_weight == 1.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(2, 32)), model(_images(2, 32)), rtol=0, atol=0)


def test_dlib_resnet29_has_dlibs_shape_and_contract():
    """29 convolutions, 150 px in, stage maps 35/17/8/4/2, a 128-d identity + the realness coordinate."""
    model = get_model("dlib_resnet29").eval()
    assert model.config.input_size == 150 and model.config.template == "dlib-chip"
    assert model.config.pixel_std == (256.0, 256.0, 256.0) and model.config.embedding_dim == 128
    assert len(model.backbone.convolutions()) == 29
    with torch.no_grad():
        maps = model.backbone.stages(model.normalise(_images(2, 150)))
        emb = model(_images(2, 150))
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]
    assert emb.shape == (2, 128)
    with_realness = get_model(ModelConfig(arch="dlib_resnet29", input_size=150, embedding_dim=129,
                                          realness_weight=3.0)).eval()
    with torch.no_grad():
        assert with_realness(_images(2, 150)).shape == (2, 129)
    assert len(with_realness.realness.local) == 4  # the 35, 17, 8 and 4 px maps feed the realness head


def test_dlib_resnet29_sums_unequal_paths_over_the_larger_extent():
    """dlib's add_prev: a 3x3 branch and a 4x4 shortcut give 4x4, zero outside each input."""
    from nets.dlib_resnet import _add_top_left

    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 1, 4, 4), 2.0)
    out = _add_top_left(a, b)
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 0, :3, :3].eq(3).all() and out[0, 0, 3, :].eq(2).all() and out[0, 1, :3, :3].eq(1).all()
    assert out[0, 1, 3, :].eq(0).all()
