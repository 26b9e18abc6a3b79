"""Tokenizing one split into an Arrow file, streamed, with the cores as threads.

Why not `Dataset.map`: at a million rows it made `prepare` slow and its memory grow with the data.
A fast (Rust) tokenizer encodes a batch with the GIL released, so threads of this one process
tokenize in parallel, with no worker processes and nothing pickled. Rows are read from the raw
split's Arrow files with plain reads and written out batch by batch: pages of a memory-mapped
file count in the process's resident memory, and mapping the raw and the tokenized tables was
what grew. Memory is bounded by the batches in flight, not by the split.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.config import DataConfig
from ftcli.data.reading import raw_batches
from ftcli.errors import FtcliError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import numpy as np
    import pyarrow as pa

BATCH_ROWS = 500
"""Rows a thread tokenizes at a time. The Rust tokenizer's encodings of a batch are allocated in
the thread's malloc arena, which keeps its high-water mark: at 1,000,000 rows and 2 threads,
2,000-row batches left ~50 MB more resident than 500-row ones, at the same speed."""

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Encoded:
    """What one split's tokenization wrote, for the manifest. Without windows a document is a row."""

    rows: int = 0  # rows written: windows, with data.long_texts windows
    documents: int = 0  # input rows
    tokens: int = 0
    max_tokens: int = 0
    truncated: int = 0  # documents not read whole: cut at max_length, or by data.max_windows
    most_windows: int = 0  # the most windows a document gave (after data.max_windows)


@dataclass
class Tokenized:
    """One batch of documents as token rows: every window of every document, in order."""

    ids: list[list[int]]
    types: list[list[int]] | None  # None when the model takes no token type ids
    windows: list[int]  # rows each document gave (1 each without windows)
    cut: list[bool]  # per document: not read whole


class FirstTextTooLong(Exception):
    """A pair whose first text leaves no room for windows of the second (`index`: its row in the
    batch); `encode_split` names the file's row."""

    def __init__(self, index: int, first_tokens: int, room: int):
        super().__init__(index, first_tokens, room)
        self.index, self.first_tokens, self.room = index, first_tokens, room


def window_stride(data: DataConfig, max_length: int) -> int:
    """`data.stride`, or by default a quarter of `max_length`: the overlap spaCy's strided spans and
    the Hugging Face question-answering examples use (a quarter to a third of the window)."""
    return data.stride if data.stride is not None else max_length // 4


class Encoder:
    """Tokenizes batches of texts as `tokenizer(*texts, truncation=..., max_length=...)` does,
    without the padding, and says which rows were cut. With `data.long_texts: windows`, as
    `tokenizer(..., stride=, return_overflowing_tokens=True)` does (the Rust tokenizer's own
    overflow; a pair keeps its first text whole and windows the second). A fast tokenizer's Rust
    side is used directly (a copy of it, so the caller's tokenizer keeps its settings); a slow one
    is called as it is, and cannot make windows."""

    def __init__(self, tokenizer, data: DataConfig, max_length: int):
        self.tokenizer, self.data, self.max_length = tokenizer, data, max_length
        self.keep = [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names]
        self.windows = data.long_texts == "windows"
        self.pair = len(data.text_columns) == 2
        self.stride = window_stride(data, max_length) if self.windows else 0
        self.strategy = "only_second" if self.windows and self.pair else data.truncation
        self.backend = self.ascii = self.whole = None
        if getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
            from tokenizers import Tokenizer

            from ftcli.data.bert_ascii import AsciiBert

            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.no_padding()
            if self.windows:
                self.whole = Tokenizer.from_str(backend.to_str())  # no truncation: the first texts' lengths
                self.whole.no_truncation()
                self._check_stride(backend)
            backend.enable_truncation(max_length, stride=self.stride, strategy=self.strategy,
                                      direction=getattr(tokenizer, "truncation_side", "right"))
            self.backend = backend
            # encode_batch_fast skips character offsets, which ftcli does not keep
            self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
            self.ascii = AsciiBert.of(backend)
            if self.windows and self.pair:
                # tokenizers 0.23's encode_batch_fast gives a pair's overflowing windows the first
                # text's type id all through (the window's last token excepted); encode_batch
                # gives tokenizer(...)'s: 0 for the first text, 1 for the second
                self._encode_batch = backend.encode_batch
                if self.ascii is not None:
                    self.ascii.encode_batch = self.ascii.shortcut.encode_batch
        elif self.windows:
            raise FtcliError(f"data.long_texts: windows needs a fast tokenizer (tokenizer.json), and "
                             f"{getattr(tokenizer, 'name_or_path', 'the model')} has a slow one only; "
                             "use long_texts: truncate")

    def _check_stride(self, backend) -> None:
        """The Rust tokenizer panics (a traceback, not an error) on a stride that leaves a window no
        new tokens, so it is checked first: here against the special tokens, per pair in `encode`.
        Sets `room`: the tokens of text a window holds."""
        specials = backend.num_special_tokens_to_add(self.pair)
        self.room = self.max_length - specials
        if self.stride >= self.room:
            raise FtcliError(f"data.stride: {self.stride} tokens of overlap leave no new tokens in a window of "
                             f"max_length {self.max_length} ({self.room} after {specials} special tokens); "
                             f"give a stride below {self.room}")

    @property
    def threads_help(self) -> bool:
        """Whether threads run in parallel: only the Rust tokenizer releases the GIL."""
        return self.backend is not None

    def encode(self, texts: list[pa.Array]) -> Tokenized:
        """The token rows of the documents of one or two Arrow string arrays (the text columns)."""
        types_wanted = "token_type_ids" in self.keep
        if self.backend is None:
            enc = self.tokenizer(*[t.to_pylist() for t in texts], truncation=self.data.truncation,
                                 max_length=self.max_length)
            ids = enc["input_ids"]
            # A slow tokenizer does not say what it cut: a row that fills max_length counts as cut.
            return Tokenized(ids, enc["token_type_ids"] if types_wanted else None, [1] * len(ids),
                             [len(x) >= self.max_length for x in ids])
        if self.windows and self.pair:
            self._check_room(texts)
        encodings = self._encodings(texts)
        if not self.windows:
            # the Rust tokenizer keeps what it cut off: a row that fills max_length exactly is not cut
            return Tokenized([e.ids for e in encodings], [e.type_ids for e in encodings] if types_wanted else None,
                             [1] * len(encodings), [bool(e.overflowing) for e in encodings])
        cap = self.data.max_windows
        rows, windows, cut = [], [], []
        for e in encodings:
            read = [e, *e.overflowing]  # the order tokenizer(..., return_overflowing_tokens=True) gives
            cut.append(cap is not None and len(read) > cap)
            read = read[:cap] if cap is not None else read
            rows.extend(read)
            windows.append(len(read))
        return Tokenized([w.ids for w in rows], [w.type_ids for w in rows] if types_wanted else None, windows, cut)

    def _check_room(self, texts: list[pa.Array]) -> None:
        """Every pair's first text leaves more than `stride` tokens for the second, or the pair fits
        whole; else FirstTextTooLong (the Rust tokenizer would panic or fail)."""
        firsts = self.whole.encode_batch_fast(texts[0].to_pylist(), add_special_tokens=False)
        for i, e in enumerate(firsts):
            room = self.room - len(e.ids)
            if room > self.stride:
                continue
            whole = self.whole.encode_batch_fast(_inputs([t.slice(i, 1) for t in texts]))[0]
            if len(whole.ids) > self.max_length:
                raise FirstTextTooLong(i, len(e.ids), room)

    def _encodings(self, texts: list[pa.Array]) -> list:
        """The Rust tokenizer's encodings of the rows, the ASCII ones through the shortcut."""
        if self.ascii is None:
            return self._encode_batch(_inputs(texts))
        import numpy as np
        import pyarrow as pa

        takes, normalized = self.ascii.split(texts)
        shortcut = self.ascii.encode_batch(_inputs(normalized))
        if takes.all():
            return shortcut
        rest = np.flatnonzero(~takes)
        encodings = [None] * len(takes)
        for i, e in zip(np.flatnonzero(takes).tolist(), shortcut):
            encodings[i] = e
        for i, e in zip(rest.tolist(), self._encode_batch(_inputs([t.take(pa.array(rest)) for t in texts]))):
            encodings[i] = e
        return encodings


def _inputs(texts: list[pa.Array]) -> list:
    """The tokenizers library's batch input: the texts, or pairs of them."""
    lists = [t.to_pylist() for t in texts]
    return list(zip(*lists)) if len(lists) == 2 else lists[0]


def encode_split(ds: datasets.Dataset, encoder: Encoder, out: Path, schema: pa.Schema, labels: Any,
                 *, positions: np.ndarray | None = None, threads: int = 1, source: str,
                 advance: Callable[[int], None] | None = None) -> Encoded:
    """Tokenize the rows of `ds` (only those at `positions`, sorted, when given) into the Arrow
    stream file `out` with `schema`, in `threads` threads, in row order. `labels`: every row's
    label (an Arrow array, or a rows x labels numpy array), indexed like `ds`. `source` names the
    file in errors; an error's row is the row of `ds` (its file's row, counted from 1)."""
    import numpy as np
    import pyarrow as pa

    text_columns = list(encoder.data.text_columns)
    multi = isinstance(labels, np.ndarray) and labels.ndim == 2
    if not multi and isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    label_type = schema.field("labels").type

    def work(piece: tuple[pa.RecordBatch, np.ndarray, int]) -> tuple[pa.RecordBatch, Encoded]:
        batch, rows, first_document = piece
        texts = [batch.column(c) for c in text_columns]
        try:
            done = encoder.encode(texts)
        except FirstTextTooLong as exc:
            raise _first_text_error(encoder, source, int(rows[exc.index]), exc) from None
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise _row_error(encoder, texts, rows, source, exc) from None
        ids, types = done.ids, done.types
        windows = np.asarray(done.windows, dtype=np.int64)
        lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        offsets_array = pa.array(offsets)

        def rows_of(values: np.ndarray) -> pa.ListArray:  # one list per row, cut at the offsets
            return pa.ListArray.from_arrays(offsets_array, pa.array(values))

        def flat(lists, dtype) -> np.ndarray:
            return np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=total)

        sources = np.repeat(rows, windows)  # each token row's document, as a row of `ds`
        # no padding is stored, so every stored token is attended to
        columns = {"input_ids": rows_of(flat(ids, np.int32)), "attention_mask": rows_of(np.ones(total, np.int8))}
        if types is not None:
            columns["token_type_ids"] = rows_of(flat(types, np.int8))
        columns["length"] = pa.array(lengths)
        columns["truncated"] = pa.array(np.repeat(np.asarray(done.cut, dtype=bool), windows), type=pa.bool_())
        if multi:
            columns["labels"] = pa.FixedSizeListArray.from_arrays(pa.array(labels[sources].ravel()), labels.shape[1])
        else:
            columns["labels"] = labels.take(pa.array(sources)).cast(label_type)  # no copy of the whole column
        if encoder.windows:  # the document's row in this split
            columns["document"] = pa.array(np.repeat(np.arange(first_document, first_document + len(rows)), windows))
        record = pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)
        return record, Encoded(rows=len(ids), documents=len(rows), tokens=total,
                               max_tokens=int(lengths.max(initial=0)), truncated=int(sum(done.cut)),
                               most_windows=int(windows.max(initial=0)))

    def numbered(pieces):  # each piece with the split's index of its first document
        first = 0
        for batch, rows in pieces:
            yield batch, rows, first
            first += len(rows)

    done = Encoded()
    with (pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer,
          rust_threads_off()):
        for record, part in _in_order(work, numbered(_pieces(ds, text_columns, positions)),
                                      threads if encoder.threads_help else 1):
            writer.write_batch(record)
            done.rows += part.rows
            done.documents += part.documents
            done.tokens += part.tokens
            done.max_tokens = max(done.max_tokens, part.max_tokens)
            done.truncated += part.truncated
            done.most_windows = max(done.most_windows, part.most_windows)
            if advance is not None:
                advance(part.documents)
    return done


PARALLELISM = "TOKENIZERS_PARALLELISM"


@contextlib.contextmanager
def rust_threads_off():
    """The tokenizers library's own thread pool off while ftcli's threads tokenize, as it was
    afterwards. By default each batch call splits its rows over a Rust thread pool: tiny tasks,
    and encodings freed by other threads than made them. On 200k MRPC pairs and 2 cores, two ftcli
    threads with it on reached 12,800 to 16,100 rows/s, and with it off 19,400 to 20,100. The library
    reads TOKENIZERS_PARALLELISM at every call; it is set only before ftcli's threads start and
    restored after they end."""
    import os

    before = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = before


def _in_order(work, items, threads: int) -> Iterator:
    """`map(work, items)` in `threads` threads, results in order, at most two per thread in flight."""
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="ftcli-tokenize") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pieces(ds: datasets.Dataset, columns: list[str],
            positions: np.ndarray | None) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """The split's `columns` in record batches of at most BATCH_ROWS rows, each with its rows'
    positions in the split; only the rows at `positions` when given."""
    import numpy as np
    import pyarrow as pa

    rows = BATCH_ROWS
    start = 0
    for batch in raw_batches(ds):
        end = start + batch.num_rows
        if positions is None:
            picked = np.arange(start, end)
            part = batch
        else:
            lo, hi = np.searchsorted(positions, [start, end])
            picked = positions[lo:hi]
            part = batch.take(pa.array(picked - start)) if hi > lo else None
        if part is not None:
            part = pa.RecordBatch.from_arrays([part.column(c) for c in columns], names=columns)
            for first, stop in _cuts(part, rows):
                yield part.slice(first, stop - first), picked[first:stop]
        start = end
    if start != ds.num_rows:
        raise FtcliError(f"internal error: read {start} rows of a split of {ds.num_rows}")


BATCH_BYTES = 1 << 18
"""Text a thread tokenizes at a time, at most (256 KiB; BATCH_ROWS rows of MRPC pairs are ~115 KiB).
Long documents would otherwise make batches of millions of tokens, whose encodings (Python lists
of ints) set the peak memory of `prepare`."""


def _cuts(part: pa.RecordBatch, rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges of `part` of at most `rows` rows and (past one row) BATCH_BYTES of text."""
    import numpy as np
    import pyarrow.compute as pc

    sizes = np.zeros(part.num_rows, dtype=np.int64)
    for column in part.columns:
        sizes += np.asarray(pc.fill_null(pc.binary_length(column), 0), dtype=np.int64)
    lo = 0
    while lo < part.num_rows:
        hi = min(lo + rows, part.num_rows)
        total = np.cumsum(sizes[lo:hi])
        over = int(np.searchsorted(total, BATCH_BYTES, side="right"))
        hi = lo + max(1, min(hi - lo, over))
        yield lo, hi
        lo = hi


def _row_error(encoder: Encoder, texts: list[pa.Array], rows, source: str, exc: Exception) -> FtcliError:
    """The row a batch failed on, in words: `only_first`/`only_second` cannot fit a row whose
    other text alone fills max_length."""
    for i, row in enumerate(rows):
        try:
            encoder.encode([t.slice(i, 1) for t in texts])
        except Exception as row_exc:  # noqa: BLE001
            if encoder.strategy == "longest_first":  # can cut any row: the failure is something else
                return FtcliError(f"{source}: row {int(row) + 1}: tokenization failed ({_first_line(row_exc)})")
            return FtcliError(f"{source}: row {int(row) + 1}: truncation {encoder.strategy} cannot fit it into "
                              f"max_length {encoder.max_length} (the text it may not cut is that long alone); "
                              "use truncation: longest_first or a larger data.max_length")
    return FtcliError(f"{source}: tokenization failed ({_first_line(exc)})")


def _first_text_error(encoder: Encoder, source: str, row: int, exc: FirstTextTooLong) -> FtcliError:
    first = encoder.data.text_columns[0]
    if exc.room <= 0:
        return FtcliError(f"{source}: row {row + 1}: its {first} alone is {exc.first_tokens} tokens, and "
                          f"long_texts: windows keeps the first text whole in every window of max_length "
                          f"{encoder.max_length}; shorten it, raise data.max_length, or swap the text_columns")
    return FtcliError(f"{source}: row {row + 1}: its {first} ({exc.first_tokens} tokens) leaves {exc.room} tokens "
                      f"a window for the second text, not more than data.stride {encoder.stride}; give a stride "
                      f"below {exc.room} or raise data.max_length")


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def features(keep: list[str], label_feature, windows: bool = False) -> datasets.Features:
    """The prepared split's columns and types; with windows, each row's `document` (its input row
    in the split)."""
    import datasets as hfds

    return hfds.Features({
        **{c: hfds.List(hfds.Value("int32" if c == "input_ids" else "int8")) for c in keep},
        "length": hfds.Value("int32"), "truncated": hfds.Value("bool"), "labels": label_feature,
        **({"document": hfds.Value("int64")} if windows else {}),
    })
