import pytest
import torch
import torch.nn as nn

from facemtl.models.norm import SourceBatchNorm2d


def _randomise(bn: SourceBatchNorm2d) -> None:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)


def test_single_source_matches_batchnorm2d():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(4)
    ours = SourceBatchNorm2d(4, 1)
    x = torch.randn(3, 4, 5, 5) * 2 + 1
    torch.testing.assert_close(ours(x, 0), ref(x))
    torch.testing.assert_close(ours.running_mean[0], ref.running_mean)
    torch.testing.assert_close(ours.running_var[0], ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, 0), ref(x))


def test_training_updates_only_the_batch_source_statistics():
    torch.manual_seed(0)
    bn = SourceBatchNorm2d(3, 3)
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(4, 3, 6, 6) + 5
    bn(x, 1)
    assert torch.equal(bn.running_mean[[0, 2]], before_mean[[0, 2]])
    assert torch.equal(bn.running_var[[0, 2]], before_var[[0, 2]])
    # momentum 0.1 towards the batch mean (~5)
    torch.testing.assert_close(bn.running_mean[1], 0.1 * x.mean((0, 2, 3)))


def test_stacked_streams_equal_separate_calls():
    torch.manual_seed(0)
    bn = SourceBatchNorm2d(3, 3)
    _randomise(bn)
    chunks = [torch.randn(2, 3, 4, 4) * (s + 1) + s for s in range(3)]
    # eval: each chunk normalised with its own source's statistics and affine parameters
    bn.eval()
    stacked = bn(torch.cat(chunks), (0, 1, 2))
    for s in range(3):
        assert torch.equal(stacked[2 * s : 2 * s + 2], bn(chunks[s], s))
    # a subset of sources, in any order, is fine in eval
    sub = bn(torch.cat([chunks[2], chunks[0]]), (2, 0))
    assert torch.equal(sub[:2], bn(chunks[2], 2))
    assert torch.equal(sub[2:], bn(chunks[0], 0))
    # train: per-chunk batch statistics; every row moves towards its own chunk only
    separate = SourceBatchNorm2d(3, 3)
    separate.load_state_dict(bn.state_dict())
    bn.train(), separate.train()
    stacked = bn(torch.cat(chunks), (0, 1, 2))
    for s in range(3):
        torch.testing.assert_close(stacked[2 * s : 2 * s + 2], separate(chunks[s], s))
    torch.testing.assert_close(bn.running_mean, separate.running_mean)
    torch.testing.assert_close(bn.running_var, separate.running_var)


def test_stacked_subset_cannot_train_and_bad_source_fails():
    bn = SourceBatchNorm2d(2, 3)
    with pytest.raises(RuntimeError, match="subset"):
        bn(torch.randn(4, 2, 3, 3), (0, 2))
    with pytest.raises(IndexError, match="out of range"):
        bn(torch.randn(2, 2, 3, 3), 3)
    with pytest.raises(ValueError, match="equal source chunks"):
        bn(torch.randn(5, 2, 3, 3), (0, 1, 2))


def test_gradients_reach_only_the_used_rows():
    bn = SourceBatchNorm2d(2, 3)
    bn(torch.randn(4, 2, 3, 3), 2).pow(2).sum().backward()
    assert bn.weight.grad[:2].abs().sum() == 0 and bn.weight.grad[2].abs().sum() > 0
    assert bn.bias.grad[:2].abs().sum() == 0 and bn.bias.grad[2].abs().sum() > 0


def test_statistics_sets_are_separate_rows_and_share_the_affine_parameters():
    torch.manual_seed(0)
    bn = SourceBatchNorm2d(3, num_sources=2, statistics_sets=2)
    assert bn.running_mean.shape == (4, 3) and bn.weight.shape == (2, 3)
    bn.active_set = 1
    x = torch.randn(4, 3, 5, 5) + 5
    bn(x, 1)  # set 1, source 1 -> row 1 * 2 + 1
    changed = [not torch.equal(bn.running_mean[r], torch.zeros(3)) for r in range(4)]
    assert changed == [False, False, False, True]
    bn(torch.cat([x, x]), (0, 1))  # stacked streams update set 1's rows only
    assert torch.equal(bn.running_mean[:2], torch.zeros(2, 3)) and not torch.equal(bn.running_mean[2], torch.zeros(3))
    bn.eval()
    bn.running_mean[1] = 5.0  # set 0's row of source 1: unused while set 1 is active
    out1 = bn(x, 1)
    bn.active_set = 0
    assert not torch.allclose(out1, bn(x, 1))


@pytest.mark.parametrize("streams", [(0, 1, 2), (2, 0)])
def test_evaluation_of_stacked_streams_is_batch_norm_and_keeps_channels_last(streams):
    """Evaluation applies each chunk's running-statistics batch norm without changing the memory
    layout (folding into channels used to return NCHW)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    bn = SourceBatchNorm2d(6, 3).eval()
    _randomise(bn)
    x = torch.randn(2 * len(streams), 6, 5, 5).contiguous(memory_format=torch.channels_last)
    out = bn(x, streams)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for k, s in enumerate(streams):
        expected = F.batch_norm(x[2 * k: 2 * k + 2], bn.running_mean[s], bn.running_var[s], bn.weight[s], bn.bias[s],
                                False, 0.0, bn.eps)
        torch.testing.assert_close(out[2 * k: 2 * k + 2], expected, rtol=1e-5, atol=1e-6)
