"""Tiny random models of each family ftcli is tested on, each with a real tokenizer of its kind
trained here by the `tokenizers` library (WordPiece, byte-level BPE, SentencePiece-style BPE,
Unigram) on a few hundred rows of the test task, and wrapped in the family's tokenizer class.
Decoders are built as users get them: GPT-2 and Llama without a pad token. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_rows

FAMILIES = ("bert", "roberta", "deberta-v2", "modernbert", "t5", "gpt2", "llama", "qwen2")

SMALL = {"hidden": 32, "layers": 2, "heads": 2, "ffn": 64, "positions": 64}


def corpus(n: int = 300) -> list[str]:
    rows = make_rows(n, seed=11)
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def _wordpiece(specials: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    return tok


def _byte_bpe(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _vocab_merges(tok) -> tuple[dict, list]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _metaspace_bpe(specials: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    return tok


def _unigram(specials: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(vocab_size=150, special_tokens=specials,
                                                              unk_token="<unk>" if "<unk>" in specials else "[UNK]"))
    return json.loads(tok.to_str())["model"]["vocab"]  # [[piece, score], ...]


def tokenizer_for(family: str):
    """The family's fast tokenizer, trained on the task's text."""
    import transformers as tf

    s = SMALL["positions"]
    if family == "bert":
        tok = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        return tf.BertTokenizerFast(vocab=tok.get_vocab(), do_lower_case=True, model_max_length=s)
    if family == "roberta":
        vocab, merges = _vocab_merges(_byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
        return tf.RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=s)
    if family == "modernbert":
        from tokenizers import processors

        tok = _byte_bpe(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                          sep_token="[SEP]", mask_token="[MASK]", model_max_length=s)
    if family == "deberta-v2":
        vocab = _unigram(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        return tf.DebertaV2TokenizerFast(vocab=[tuple(v) for v in vocab], model_max_length=s)
    if family == "t5":
        vocab = _unigram(["<pad>", "</s>", "<unk>"])
        return tf.T5TokenizerFast(vocab=[tuple(v) for v in vocab], extra_ids=0, model_max_length=s)
    if family in ("gpt2", "qwen2"):
        vocab, merges = _vocab_merges(_byte_bpe(["<|endoftext|>"]))
        if family == "gpt2":  # as published: no pad token, and a limit the model cannot take
            return tf.GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=int(1e30))
        return tf.Qwen2TokenizerFast(vocab=vocab, merges=merges, model_max_length=131072)
    if family == "llama":  # as published: no pad token
        vocab, merges = _vocab_merges(_metaspace_bpe(["<unk>", "<s>", "</s>"]))
        return tf.LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=int(1e30))
    raise ValueError(family)


def config_for(family: str, tok, dropout: float = 0.1):
    import transformers as tf

    h, n, a, f, p = (SMALL[k] for k in ("hidden", "layers", "heads", "ffn", "positions"))
    v = len(tok)
    if family == "bert":
        return tf.BertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a, intermediate_size=f,
                             max_position_embeddings=p, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if family == "roberta":
        return tf.RobertaConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                intermediate_size=f, max_position_embeddings=p + 2, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, hidden_dropout_prob=dropout,
                                attention_probs_dropout_prob=dropout)
    if family == "deberta-v2":
        return tf.DebertaV2Config(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                  intermediate_size=f, max_position_embeddings=p, relative_attention=True,
                                  position_buckets=16, pos_att_type=["p2c", "c2p"], pooler_hidden_size=h,
                                  pad_token_id=tok.pad_token_id, type_vocab_size=0, hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout, pooler_dropout=dropout)
    if family == "modernbert":
        return tf.ModernBertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                   intermediate_size=f, max_position_embeddings=p, global_attn_every_n_layers=2,
                                   local_attention=16, pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                                   sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                   eos_token_id=tok.sep_token_id, attention_dropout=dropout, mlp_dropout=dropout,
                                   embedding_dropout=dropout)
    if family == "t5":
        return tf.T5Config(vocab_size=v, d_model=h, d_kv=h // a, d_ff=f, num_layers=n, num_decoder_layers=n, num_heads=a,
                           relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id, dropout_rate=dropout)
    if family == "gpt2":
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        return tf.GPT2Config(vocab_size=v, n_embd=h, n_layer=n, n_head=a, n_positions=p, bos_token_id=eos,
                             eos_token_id=eos, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if family == "llama":
        return tf.LlamaConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                              num_key_value_heads=a, intermediate_size=f, max_position_embeddings=p,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attention_dropout=dropout)
    if family == "qwen2":  # grouped-query attention: 4 query heads share 2 key/value heads
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        return tf.Qwen2Config(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=f, max_position_embeddings=p,
                              bos_token_id=eos, eos_token_id=eos, attention_dropout=dropout)
    raise ValueError(family)


def build(family: str, folder: Path, dropout: float = 0.1) -> Path:
    """Write the family's tiny random base model and its tokenizer into `folder`."""
    import torch
    from transformers import AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_for(family)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModel.from_config(config_for(family, tok, dropout)).save_pretrained(folder)
    return folder
