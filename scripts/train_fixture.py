"""Train quantperf's fixture model: a small LLaMA-architecture LM on the bundled corpus.

Random weights give near-uniform next-token distributions, on which KL divergence and
top-1 agreement are noise. This model is trained, so quantization error shows up in
its quality metrics. Deterministic: fixed seeds, deterministic algorithms, fixed data
order. It runs in minutes on a GPU and in about 15-25 minutes on a 2-core CPU:

    python scripts/train_fixture.py                  # writes quantperf/data/fixture-llama
    python scripts/train_fixture.py --steps 50 --out /tmp/fx   # a quick smoke run

Every Linear dimension is a multiple of 64 (bitsandbytes' CPU 4-bit path needs it).
Weights are stored as float16 safetensors to keep the repository small.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "quantperf" / "data" / "corpus"


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def heldout_perplexity(model, ids: torch.Tensor, ctx: int, device: str) -> float:
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - ctx, ctx):
            window = ids[start : start + ctx + 1].to(device)
            logits = model(window[None, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum")
            nll += loss.item()
            count += ctx
    model.train()
    return math.exp(nll / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "quantperf" / "data" / "fixture-llama"))
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_text = (CORPUS / "shakespeare_train.txt").read_text(encoding="utf-8")
    heldout_text = (CORPUS / "shakespeare_heldout.txt").read_text(encoding="utf-8")
    tokenizer = train_tokenizer(train_text, args.vocab)
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    heldout_ids = torch.tensor(tokenizer(heldout_text)["input_ids"], dtype=torch.long)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    gen = torch.Generator().manual_seed(args.seed)
    log: list[dict] = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.seq + 1] for s in starts]).to(args.device)
        loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
        # labels are shifted inside the model; feeding the window minus its last token
        # keeps every position's target inside the window.
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            entry = {"step": step, "train_loss": round(loss.item(), 4),
                     "lr": sched.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - t0, 1)}
            if step % 200 == 0 or step == args.steps:
                entry["heldout_ppl"] = round(heldout_perplexity(model, heldout_ids, args.seq, args.device), 3)
            log.append(entry)
            print(json.dumps(entry), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    final_ppl = heldout_perplexity(model.float(), heldout_ids, args.seq, "cpu")
    summary = {
        # the output folder is recorded by name only: logs carry no machine paths
        "args": vars(args) | {"out": Path(args.out).name},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train_ids), "heldout_tokens": len(heldout_ids),
        "heldout_ppl_fp16_weights_fp32_compute": round(final_ppl, 3),
        "heldout_ppl_context": args.seq,
        "torch": torch.__version__,
        "log": log,
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"held-out perplexity {final_ppl:.2f} -> {out}")


if __name__ == "__main__":
    main()
