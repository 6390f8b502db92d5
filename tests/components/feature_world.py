"""The tiny event tables of the feature-store tests: ties at one time, an event exactly one window before another,
a user whose final state differs from every earlier state, a profile-only user."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from components.config import load_config

LAST_N = 3
REDIS_PASSWORD_ENV = load_config().features.redis_password_env
WINDOWS = (1, 3)  # days
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = pd.Timestamp(NOW - timedelta(days=6))
H, D = pd.Timedelta(hours=1), pd.Timedelta(days=1)
DATASET = load_config().dataset  # the MovieLens declaration: age (bucketed), gender, occupation; year, genres
PROFILE = DATASET.user_attributes


def tiny_tables() -> dict[str, pd.DataFrame]:
    """Events chosen so that any leak changes an answer: ties at one time, an event exactly one window
    before another, a user whose final state differs from every earlier state, a profile-only user."""
    events = [
        (1, 10, 5.0, T0), (1, 11, 3.0, T0 + H), (1, 12, 4.0, T0 + H), (1, 13, 1.0, T0 + 2 * D),
        (1, 10, 2.0, T0 + 5 * D),
        (2, 10, 4.0, T0 + 0.5 * H), (2, 11, np.nan, T0 + 2.5 * D), (2, 10, 2.0, T0 + 2.5 * D + H),
        (3, 13, 3.0, T0 + D), (3, 14, 4.0, T0 + 5 * D),
    ]
    interactions = pd.DataFrame(events, columns=["user_id", "item_id", "rating", "event_timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    interactions["event_timestamp"] = pd.to_datetime(interactions["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]")
    created = (T0 - 30 * D).tz_convert(UTC)
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "age": [17, 30, 56, 45], "gender": ["F", "M", "F", "M"],
                          "occupation": ["student", "artist", "writer", "doctor"], "zip_code": ["0"] * 4,
                          "created_timestamp": created})
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "title": [f"Film {i}" for i in range(10, 15)],
                          "year": pd.array([1990, 1991, None, 1993, 1994], dtype="Int64"),
                          "genres": ["Drama", "Comedy|Drama", "Action", "Horror", "Drama"],
                          "created_timestamp": created})
    items["text"] = items["title"] + "."
    for frame in (users, items):
        frame["created_timestamp"] = frame["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items}
