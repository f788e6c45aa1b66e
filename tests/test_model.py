import pytest
import torch

from drcn_cli.model import DRCN, DRCNConfig, conv_flops_per_pixel


def tiny(seed: int = 0, **kw) -> DRCN:
    torch.manual_seed(seed)
    return DRCN(DRCNConfig(features=kw.get("features", 8), recursions=kw.get("recursions", 4))).eval()


def test_full_model_parameter_count_matches_the_paper():
    model = DRCN()
    kernels = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert kernels == 1_774_080  # the paper's count of conv weights for F=256, D=16
    biases = 4 * 256 + 1
    assert sum(p.numel() for p in model.parameters()) == 1_774_080 + biases + 16
    assert model.config.receptive_radius == 20


def test_shapes_of_training_and_inference_forward():
    model = tiny()
    x = torch.rand(2, 1, 11, 13)
    predictions, final = model.forward_all(x)
    assert predictions.shape == (4, 2, 1, 11, 13)
    assert final.shape == (2, 1, 11, 13)
    assert model(x).shape == (2, 1, 11, 13)


def test_inference_accumulation_equals_weighted_sum_of_predictions():
    model = tiny()
    with torch.no_grad():
        model.ensemble_logits.copy_(torch.randn(4))
        model.recursive.weight.add_(0.05 * torch.randn_like(model.recursive.weight))
        x = torch.rand(1, 1, 9, 9)
        predictions, final = model.forward_all(x)
        w = model.ensemble_weights()
        manual = (w.view(4, 1, 1, 1, 1) * predictions).sum(0)
        torch.testing.assert_close(final, manual)
        torch.testing.assert_close(model(x), final, rtol=0, atol=1e-6)


def test_fewer_recursions_renormalise_the_first_k_weights():
    model = tiny()
    with torch.no_grad():
        model.ensemble_logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.5]))
        w2 = model.ensemble_weights(2)
        assert w2.sum().item() == pytest.approx(1.0)
        full = model.ensemble_weights()
        torch.testing.assert_close(w2, full[:2] / full[:2].sum())
        x = torch.rand(1, 1, 8, 8)
        predictions, _ = model.forward_all(x)
        expected = w2[0] * predictions[0] + w2[1] * predictions[1]
        torch.testing.assert_close(model(x, recursions=2), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_recursions_out_of_range_are_refused(k):
    with pytest.raises(ValueError, match="recursions"):
        tiny()(torch.rand(1, 1, 4, 4), recursions=k)


def test_initialisation_is_identity_recursion_with_zero_biases():
    model = tiny()
    w = model.recursive.weight
    expected = torch.zeros_like(w)
    expected[torch.arange(8), torch.arange(8), 1, 1] = 1
    assert torch.equal(w, expected)
    for conv in (model.embed1, model.embed2, model.recursive, model.recon1, model.recon2):
        assert torch.count_nonzero(conv.bias) == 0
    # He init: std of a 3x3 conv with fan_in 9*8 is sqrt(2/72).
    assert model.embed2.weight.std().item() == pytest.approx((2 / 72) ** 0.5, rel=0.25)
    torch.testing.assert_close(model.ensemble_weights(), torch.full((4,), 0.25))


def test_identity_recursion_makes_every_prediction_equal_at_init():
    model = tiny()
    with torch.no_grad():
        predictions, _ = model.forward_all(torch.rand(1, 1, 6, 6))
    for d in range(1, 4):
        torch.testing.assert_close(predictions[d], predictions[0])


def test_flop_count_of_full_model():
    # 3x3 convs: embed 1->256 and 256->256, then per recursion 256->256 twice and 256->1.
    per_recursion = 9 * (256 * 256 * 2 + 256)
    assert conv_flops_per_pixel(DRCNConfig()) == 2 * (9 * (256 + 256 * 256) + 16 * per_recursion)
    assert conv_flops_per_pixel(DRCNConfig(), recursions=1) < conv_flops_per_pixel(DRCNConfig())


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_cpu_inference_equals_the_training_forward(memory_format):
    # Under inference_mode on the CPU the conv+ReLU pairs run as one oneDNN op; the result must not change.
    model = tiny(seed=3, features=8, recursions=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 1, 17, 15)
    with torch.no_grad():
        _, expected = model.forward_all(x)
    model = model.to(memory_format=memory_format)
    with torch.inference_mode():
        got = model(x.contiguous(memory_format=memory_format))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_shifted_taps_add_up_to_the_zero_padded_conv(size):
    from drcn_cli.model import shift_and_add_taps

    gen = torch.Generator().manual_seed(size)
    h = torch.randn(2, 6, 9, 7, generator=gen)
    weight = torch.randn(1, 6, size, size, generator=gen)
    taps = weight[0].permute(1, 2, 0).reshape(size * size, 6, 1, 1)
    got = shift_and_add_taps(torch.nn.functional.conv2d(h, taps), size)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(h, weight, padding=size // 2))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fp32_cpu_inference_adds_up_recon2_taps_and_matches_the_plain_loop(memory_format, monkeypatch):
    from drcn_cli import model as model_module

    model = tiny(seed=4, features=8, recursions=5).to(memory_format=memory_format)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 1, 13, 11).contiguous(memory_format=memory_format)
    calls = []
    by_taps = model_module.DRCN._residuals_by_taps
    monkeypatch.setattr(model_module.DRCN, "_residuals_by_taps", lambda *a: calls.append(1) or by_taps(*a))
    with torch.inference_mode():
        got = model(x, recursions=4)
        assert calls == [1]  # the tap path ran
        monkeypatch.setattr(model_module, "_taps_apply", lambda conv, h: False)
        expected = model(x, recursions=4)
    assert calls == [1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_bf16_conv_weights_compute_in_bf16_and_return_float32():
    model = tiny(seed=1)
    x = torch.rand(1, 1, 12, 12)
    with torch.inference_mode():
        reference = model(x)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(torch.bfloat16)
        out = model(x)
    assert out.dtype == torch.float32
    assert 0 < (out - reference).abs().max() < 0.02


def test_bf16_runs_without_onednns_bf16_kernels(monkeypatch):
    # A CPU without AVX512-BW/VL/DQ (or AVX-NE-CONVERT) has no oneDNN bf16 conv: the fused op would raise there,
    # so the model takes conv2d, which falls back to torch's own kernels.
    from drcn_cli import model as model_module

    model = tiny(seed=2)
    x = torch.rand(1, 1, 12, 12)
    h = torch.rand(1, 8, 6, 6, dtype=torch.bfloat16)
    with torch.inference_mode():
        reference = model(x)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(torch.bfloat16)
        monkeypatch.setattr(model_module, "_onednn_runs_bf16", lambda: True)
        assert model_module._fused_conv_relu_applies(model.recursive, h) == torch.backends.mkldnn.is_available()
        monkeypatch.setattr(model_module, "_onednn_runs_bf16", lambda: False)
        assert not model_module._fused_conv_relu_applies(model.recursive, h)
        out = model(x)
    assert out.dtype == torch.float32
    assert 0 < (out - reference).abs().max() < 0.02


def test_fresh_widening_keeps_the_function_and_lets_the_new_channels_learn():
    from drcn_cli.model import widen

    small = tiny(seed=2, features=6, recursions=4)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(5)
    wide = widen(small, 10, "fresh")
    assert wide.config.features == 10 and wide.config.recursions == 4
    x = torch.rand(2, 1, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(wide.forward_all(x)[1], small.forward_all(x)[1], rtol=0, atol=1e-6)
    # The new channels carry a signal, and the loss reaches the weights that lead out of them.
    _, final = wide.forward_all(x)
    final.square().mean().backward()
    assert wide.recon2.weight.grad[:, 6:].abs().sum() > 0
    with pytest.raises(ValueError, match="fewer filters"):
        widen(wide, 6)


def test_split_widening_copies_each_channel_and_shares_its_outgoing_weights():
    from drcn_cli.model import widen

    small = tiny(seed=2, features=4, recursions=3)
    exact = widen(small, 10, noise=0.0)  # channels 4-9 copy 0-3, 0-1 (three copies of 0 and 1, two of 2 and 3)
    x = torch.rand(2, 1, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(exact.forward_all(x)[1], small.forward_all(x)[1], rtol=0, atol=1e-6)
    source, copies = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]), torch.tensor([3.0, 3, 2, 2])
    torch.testing.assert_close(exact.embed1.weight, small.embed1.weight[source])
    torch.testing.assert_close(exact.recon1.bias, small.recon1.bias[source])
    torch.testing.assert_close(
        exact.recursive.weight, small.recursive.weight[source][:, source] / copies[source].view(1, -1, 1, 1)
    )
    torch.testing.assert_close(exact.recon2.weight, small.recon2.weight[:, source] / copies[source].view(1, -1, 1, 1))
    # With noise, only the new copies' incoming weights move, by about noise x the layer's std: the old channels
    # are as they were, and the copies now differ, so training can pull them apart.
    torch.manual_seed(5)
    noisy = widen(small, 10, noise=0.01)
    for name in ("embed1", "embed2", "recursive", "recon1"):
        moved, ref = getattr(noisy, name).weight, getattr(exact, name).weight
        torch.testing.assert_close(moved[:4], ref[:4], rtol=0, atol=0)
        ratio = (moved[4:] - ref[4:]).std() / ref.std()
        assert 0.005 < ratio < 0.02, (name, ratio)
    torch.testing.assert_close(noisy.recon2.weight, exact.recon2.weight, rtol=0, atol=0)
    with torch.no_grad():
        assert 0 < (noisy.forward_all(x)[1] - exact.forward_all(x)[1]).abs().max() < 0.05
    with pytest.raises(ValueError, match="unknown widening"):
        widen(small, 10, method="zero")


def test_signed_widening_keeps_the_function_and_adam_moves_the_copies_apart():
    from drcn_cli.model import widen

    small = tiny(seed=4, features=4, recursions=3)
    x, target = torch.rand(2, 1, 13, 11), torch.rand(2, 1, 13, 11)
    split, signed = widen(small, 10, noise=0.0), widen(small, 10, "signed", noise=0.0)
    with torch.no_grad():
        torch.testing.assert_close(signed.forward_all(x)[1], small.forward_all(x)[1], rtol=0, atol=1e-5)
    # channels 4-9 copy 0-3, 0-1: three copies of 0 and 1 (2/3, 2/3, -1/3), two of 2 and 3 (1.5, -0.5)
    share = torch.tensor([2 / 3, 2 / 3, 1.5, 1.5, 2 / 3, 2 / 3, -0.5, -0.5, -1 / 3, -1 / 3])
    shared = small.recon2.weight[:, torch.arange(10) % 4] * share.view(1, -1, 1, 1)
    torch.testing.assert_close(signed.recon2.weight, shared)

    def one_adam_step(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.nn.functional.l1_loss(model.forward_all(x)[1], target).backward()
        optimizer.step()
        rows = model.recursive.weight.detach().flatten(1)
        return (rows[4:] - rows[torch.arange(4, 10) % 4]).norm(dim=1)

    assert one_adam_step(split).max() < 1e-6  # copies stay copies: Adam cancels the factor between their gradients
    apart = one_adam_step(signed)
    assert (apart[[2, 3, 4, 5]] > 1e-3).all()  # read with a negative share: moved the other way (channels 6-9)
    assert apart[[0, 1]].max() < 1e-6  # 4 and 5, positive like their sources, move with them


def test_widen_starts_the_new_channels_at_new_scale_of_a_fresh_init():
    from drcn_cli.model import widen

    small = tiny(seed=2, features=6, recursions=4)
    torch.manual_seed(5)
    full = widen(small, 10, "fresh", new_scale=1.0)
    torch.manual_seed(5)
    scaled = widen(small, 10, "fresh")  # default new_scale 0.01
    for name in ("embed1", "embed2", "recon1"):
        big, ref = getattr(scaled, name).weight, getattr(full, name).weight
        torch.testing.assert_close(big[6:], 0.01 * ref[6:])
        torch.testing.assert_close(big[:6], ref[:6])
    # The recursive conv keeps its identity on the new channels: it carries, it does not amplify.
    torch.testing.assert_close(scaled.recursive.weight, full.recursive.weight)
    # So the new channels' maps start about 100x smaller than at a fresh init.
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        h_full = torch.relu(full.embed2(torch.relu(full.embed1(x))))[:, 6:]
        h_scaled = torch.relu(scaled.embed2(torch.relu(scaled.embed1(x))))[:, 6:]
    assert 0 < h_scaled.abs().max() < 0.05 * h_full.abs().max()


def _shaken(seed: int, features: int = 8, recursions: int = 5) -> DRCN:
    model = tiny(seed=seed, features=features, recursions=recursions)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("path", ["taps", "loop", "autograd"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_window_with_context_rows_gives_the_rows_of_the_whole_image(path, memory_format, monkeypatch):
    from drcn_cli import model as model_module

    model = _shaken(seed=5).to(memory_format=memory_format)
    assert model.config.receptive_radius == 9  # the windows below are drawn for it
    x = torch.rand(1, 1, 50, 11).contiguous(memory_format=memory_format)
    if path == "loop":
        monkeypatch.setattr(model_module, "_taps_apply", lambda conv, h: False)
    grad = torch.enable_grad() if path == "autograd" else torch.no_grad()
    with grad:
        for k in (2, 5):
            whole = model(x, recursions=k)
            # (core rows, window rows): interior, at either edge with more context than needed, at the image's
            # edge with less context than the radius (never cut there), the whole image
            for (a, b), (wt, wb) in [((20, 30), (11, 39)), ((0, 10), (0, 30)), ((40, 50), (20, 50)),
                                     ((4, 20), (0, 29)), ((0, 50), (0, 50))]:
                window = x[:, :, wt:wb].contiguous(memory_format=memory_format)
                got = model(window, recursions=k, context=(a - wt, wb - b))
                assert got.shape == (1, 1, b - a, 11)
                torch.testing.assert_close(got, whole[:, :, a:b], rtol=0, atol=1e-6)


def test_context_rows_are_cut_as_the_layers_consume_them(monkeypatch):
    from drcn_cli import model as model_module

    model = _shaken(seed=6)  # D=5: depth 9, the output needs 9 - l rows of context from the map at depth l
    heights = []
    conv_relu = model_module._conv_relu
    monkeypatch.setattr(
        model_module, "_conv_relu", lambda conv, h: heights.append((conv, h.shape[2])) or conv_relu(conv, h)
    )
    with torch.inference_mode():
        model(torch.rand(1, 1, 28, 6), context=(9, 9))  # a core of 10 rows, 9 rows of context above and below
    assert [rows for conv, rows in heights if conv is model.recursive] == [10 + 2 * c for c in (7, 6, 5, 4, 3)]
    assert {rows for conv, rows in heights if conv is model.recon1} == {10 + 2 * 2}
    heights.clear()
    with torch.inference_mode():
        model(torch.rand(1, 1, 28, 6), context=(4, 0))  # less context than the radius: the image's edge, not cut
    assert {rows for _, rows in heights} == {28}


@pytest.mark.parametrize("context", [(-1, 0), (0, -2), (5, 5), (10, 0)])
def test_context_must_leave_rows(context):
    with pytest.raises(ValueError, match="context rows"):
        tiny()(torch.rand(1, 1, 10, 4), context=context)


def test_context_row_cost_weighs_each_conv_by_its_work():
    from drcn_cli.model import context_row_cost

    # F=1, D=1, 3x3: five convs of equal work reading 10, 8, 6, 4 and 2 context rows, against 10 each
    assert context_row_cost(DRCNConfig(features=1, recursions=1)) == pytest.approx(30 / 50)
    assert context_row_cost(DRCNConfig(features=64, recursions=16)) == pytest.approx(0.330, abs=5e-4)
