"""The conventions every layer shares, each with one home: special ids (mmbert.utils), unwrap
(mmbert.utils), padding (data.packing.pad_rows), mean pooling (model.encoder.mean_pool), tier specs
(data.sampling.parse_tier), temperature sampling (data.sampling.temperature_probs), the SQuAD
reader (eval.data.load_squad)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mmbert.data.packing import pad_rows
from mmbert.data.sampling import SamplingError, language_set, parse_tier, temperature_probs
from mmbert.eval.data import EvalDataError, load_squad
from mmbert.model.config import EncoderConfig
from mmbert.model.encoder import mean_pool
from mmbert.tokenizer import config_special_ids, sampling_budgets
from mmbert.utils import IGNORE_INDEX, SPECIAL_TOKENS, unwrap


def test_special_ids_derive_from_one_table():
    cfg = EncoderConfig()
    roles = {"pad_token_id": "<pad>", "eos_token_id": "<eos>", "bos_token_id": "<bos>", "cls_token_id": "<bos>",
             "sep_token_id": "<eos>", "unk_token_id": "<unk>", "mask_token_id": "<mask>"}
    assert {k: SPECIAL_TOKENS[getattr(cfg, k)] for k in roles} == roles
    assert config_special_ids(cfg) == {0, 1, 2, 3, 4}
    assert config_special_ids({"pad_token_id": 1, "sep_token_id": 2, "mask_token_id": None}) == {1, 2}
    assert config_special_ids(None) == set()
    assert cfg.to_hf_dict()["sparse_pred_ignore_index"] == IGNORE_INDEX == -100


@pytest.fixture
def one_process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_strips_ddp_and_compile_in_any_nesting(one_process_group):
    # The two former copies disagreed: train.parallel.unwrap stripped DDP only, checkpoint._unwrap
    # DDP then torch.compile. Both wrappers in both orders must come off.
    m = nn.Linear(3, 2)
    assert unwrap(m) is m
    assert unwrap(DDP(m)) is m
    assert unwrap(torch.compile(m)) is m
    assert unwrap(torch.compile(DDP(m))) is m
    assert unwrap(DDP(torch.compile(m))) is m


def test_unwrap_leaves_a_non_module_attribute_alone():
    m = nn.Linear(3, 2)
    m.module = "not a module"  # an attribute of that name is no wrapper
    assert unwrap(m) is m


def test_pad_rows_right_pads_with_mask():
    ids, mask = pad_rows([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_mean_pool_averages_real_tokens_only():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[5.0, 6.0], [100.0, 100.0], [100.0, 100.0]],
                      [[7.0, 7.0], [7.0, 7.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # exact: sums of small integers and a division by 1 or 2 are exact in fp32
    assert mean_pool(h, mask).tolist() == [[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]]  # a row with no token: 0, not NaN


def test_tier_specs_are_read_in_one_place():
    assert parse_tier("all") == ("all", 0.0)
    assert parse_tier("top:60") == ("top", 60.0)
    assert parse_tier("min:1_000") == ("min", 1000.0)
    for bad, msg in (("top:0", "whole K"), ("top:1.5", "whole K"), ("min:0", "X > 0"), ("some", "unknown"),
                     ("top:1e", "unknown")):
        with pytest.raises(SamplingError, match=msg):
            parse_tier(bad)
    assert language_set("top:5") == "top:5" and language_set("all") == "all"
    assert language_set("deu_Latn,fra_Latn") == ["deu_Latn", "fra_Latn"]


def test_tokenizer_budgets_use_the_loaders_temperature_sampling():
    sizes = {"big": 10**9, "mid": 10**6, "small": 10**3}  # no cap reached at this total
    p = temperature_probs(sizes, 0.3)
    assert sampling_budgets(sizes, 50_000, 0.3) == {k: int(50_000 * v) for k, v in p.items()}
    assert temperature_probs(sizes, 0.0, allow_zero=True) == pytest.approx({k: 1 / 3 for k in sizes}, abs=1e-15)  # exp(0)/3
    with pytest.raises(SamplingError, match="τ must be > 0"):
        temperature_probs(sizes, 0.0)


def test_one_squad_reader_strict_for_qa_lenient_for_retrieval(tmp_path):
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "a", "question": "Which city?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "b", "question": "How big?", "answers": []}]}]}]}), encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"qas\[1\]\.answers: empty"):
        load_squad(f)
    ex = load_squad(f, answers_required=False)
    assert [(e.id, e.question, e.context, e.answers, e.paragraph) for e in ex] == [
        ("a", "Which city?", "Paris is big.", ("Paris",), 0), ("b", "How big?", "Paris is big.", (), 0)]
