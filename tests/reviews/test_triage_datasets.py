"""The labelled sets triage is measured on: the English one fetched from the vaderSentiment sdist
(pinned by sha256, cached under the project), and the Japanese one the project wrote."""

from __future__ import annotations

import os
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest

from aftercare.reviews import datasets
from aftercare.reviews.datasets import (
    AMAZON_FILE,
    VADER_SDIST,
    DatasetCorrupt,
    DatasetUnavailable,
    ensure_amazon_snippets,
    load_amazon_snippets,
    load_ja_triage,
)
from tests.reviews.test_triage_figures import amazon_path  # noqa: F401  (the session fixture)


def test_amazon_set_has_the_published_counts(amazon_path: Path):  # noqa: F811
    items = load_amazon_snippets(amazon_path)
    assert len(amazon_path.read_text(encoding="utf-8").splitlines()) == 3708
    assert Counter(i.negative for i in items) == {True: 941, False: 1514}
    assert all(i.rating is not None and (i.rating <= -1 or i.rating >= 1) for i in items)
    assert all(i.negative == (i.rating <= -1) for i in items if i.rating is not None)


def test_a_cached_sdist_is_extracted_without_the_network(amazon_path: Path, tmp_path: Path):  # noqa: F811
    sdist = amazon_path.parent / VADER_SDIST
    shutil.copy(sdist, tmp_path / VADER_SDIST)
    got = ensure_amazon_snippets(tmp_path, timeout_s=0.001)  # pip would time out: it is not called
    assert got == tmp_path / AMAZON_FILE and got.read_bytes() == amazon_path.read_bytes()


def test_a_corrupt_sdist_is_refused_and_removed(tmp_path: Path):
    (tmp_path / VADER_SDIST).write_bytes(b"not the sdist")
    with pytest.raises(DatasetCorrupt, match="expected 5d7c06e0"):
        ensure_amazon_snippets(tmp_path)
    assert not (tmp_path / VADER_SDIST).exists()  # the next call fetches it again
    assert not (tmp_path / AMAZON_FILE).exists()


def test_a_tampered_extracted_file_is_not_trusted(amazon_path: Path, tmp_path: Path):  # noqa: F811
    shutil.copy(amazon_path.parent / VADER_SDIST, tmp_path / VADER_SDIST)
    (tmp_path / AMAZON_FILE).write_text("1_1\t-4\tmade up\n", encoding="utf-8")
    got = ensure_amazon_snippets(tmp_path, timeout_s=0.001)
    assert got.read_bytes() == amazon_path.read_bytes()  # re-extracted from the checked sdist


def test_an_unreachable_index_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_INDEX_URL", dead)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(DatasetUnavailable, match=r"pip download vaderSentiment==3.3.2 .*failed"):
        ensure_amazon_snippets(tmp_path, timeout_s=60)
    assert list(tmp_path.iterdir()) == []


def test_japanese_set_covers_every_complaint_kind():
    items = load_ja_triage()
    assert len(items) >= 200
    assert len({i.text for i in items}) == len(items), "a sentence is listed twice"
    kinds = Counter((i.negative, i.kind) for i in items)
    for kind in ("late", "damaged", "wrong_item", "not_as_described", "rude_service", "mixed",
                 "defective", "missing_parts", "packaging"):  # fmt: skip
        assert kinds[(True, kind)] >= 8, kind
    assert kinds[(False, "praise")] >= 50 and kinds[(False, "tricky")] >= 40
    assert "商品は良いが配送が遅い。" in {i.text for i in items if i.negative}
    assert {"問題なく届きました。ありがとうございます。", "悪くないです。"} <= {
        i.text for i in items if not i.negative
    }


def test_japanese_set_rejects_an_unknown_label(tmp_path: Path):
    bad = tmp_path / "ja.tsv"
    bad.write_text("label\tkind\tsentence\nmaybe\tlate\t遅い。\n", encoding="utf-8")
    with pytest.raises(DatasetCorrupt, match="label 'maybe'"):
        load_ja_triage(bad)


def test_the_module_prints_the_path_or_why_not(amazon_path: Path, tmp_path: Path, capsys):  # noqa: F811
    assert datasets.main(["--cache", str(amazon_path.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(amazon_path)
    (tmp_path / VADER_SDIST).write_bytes(b"garbage")
    assert datasets.main(["--cache", str(tmp_path)]) == 1
    assert "aftercare: vaderSentiment-3.3.2.tar.gz has sha256" in capsys.readouterr().err
