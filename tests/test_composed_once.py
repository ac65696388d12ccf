"""`composed_once()`: RA's composed weight built once while the weights are fixed."""

from __future__ import annotations

import pytest
import torch

from racli_models import GPTConfig, attention, build_attention, composed_once

FOLDED = ["ra_v5", "ra_v5_untied"]


def _counting(attn):
    torch.manual_seed(0)
    m = build_attention(attn, GPTConfig(n_head=4, n_embd=64, block_size=16, attn=attn)).eval()
    calls = []
    inner = m.folded_weight

    def counted():
        calls.append(1)
        return inner()

    m.folded_weight = counted
    return m, calls


@pytest.mark.parametrize("attn", FOLDED)
def test_no_grad_forwards_compose_once_and_agree(attn):
    """By default (`REUSE`) every eager no-grad forward reuses the stored weight."""
    m, calls = _counting(attn)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        ref = m(x)
        assert len(calls) == 1
        with composed_once():
            outs = [m(x) for _ in range(3)]
        outs.append(m(x))
        assert len(calls) == 1  # one composition for five forwards
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("attn", FOLDED)
def test_without_reuse_only_the_block_reuses(attn, monkeypatch):
    monkeypatch.setattr(attention, "REUSE", False)
    m, calls = _counting(attn)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        ref = m(x)
        m(x)
        assert len(calls) == 2
        with composed_once():
            outs = [m(x) for _ in range(3)]
        assert len(calls) == 3  # one composition for three forwards
        m(x)
        assert len(calls) == 4  # the block's end dropped the stored weight
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("attn", FOLDED)
def test_an_in_place_update_composes_anew(attn):
    m, calls = _counting(attn)
    x = torch.randn(2, 16, 64)
    with torch.no_grad(), composed_once():
        before = m(x)
        m.w_rec.add_(0.5)  # an optimizer step is an in-place update like this
        after = m(x)
        fresh = m(x)
    assert len(calls) == 2
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(after, m(x), rtol=0, atol=0)


@pytest.mark.parametrize("attn", FOLDED)
def test_grad_mode_always_composes(attn):
    """With gradients on, W_f must stay in the graph, so nothing is reused."""
    m, calls = _counting(attn)
    x = torch.randn(2, 16, 64)
    with composed_once():
        for _ in range(2):
            m(x).sum().backward()
    assert len(calls) == 2
    assert m.w_rec.grad is not None and m.w_rec.grad.abs().sum() > 0


def test_nested_blocks_keep_the_outer_store():
    m, calls = _counting("ra_v5")
    x = torch.randn(2, 16, 64)
    with torch.no_grad(), composed_once():
        m(x)
        with composed_once():
            m(x)
        m(x)
    assert len(calls) == 1


def test_the_baseline_is_untouched():
    torch.manual_seed(0)
    m = build_attention("baseline", GPTConfig(n_head=4, n_embd=64, block_size=16)).eval()
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        ref = m(x)
        with composed_once():
            torch.testing.assert_close(m(x), ref, rtol=0, atol=0)


def test_compiled_forwards_compose_in_their_graph_and_do_not_recompile():
    """Under torch.compile the store is never read, so fresh blocks do not retrace."""
    import torch._dynamo.testing

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = build_attention("ra_v5", GPTConfig(n_head=4, n_embd=64, block_size=16, attn="ra_v5"))
    m.eval()
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(m, backend=counter, dynamic=False)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        ref = m(x)
        for _ in range(3):
            with composed_once():
                torch.testing.assert_close(fn(x), ref)
        torch.testing.assert_close(fn(x), ref)
    assert counter.frame_count == 1
