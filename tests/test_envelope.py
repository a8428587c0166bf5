"""The envelope check: the quick path never accepts what the schema refuses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aircall.envelope import clearly_valid
from engine.schemas import webhook_validator

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=80))
names = st.one_of(st.from_regex(r"[a-z_]{1,64}", fullmatch=True), st.text(max_size=70), scalars)
events = st.one_of(st.from_regex(r"[a-z_]{1,64}\.[a-z_]{1,64}", fullmatch=True), st.text(max_size=140), scalars)
timestamps = st.one_of(st.integers(min_value=-10, max_value=253402300810), st.floats(), st.booleans(), scalars)
tokens = st.one_of(st.text(max_size=600), scalars)
datas = st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=3), st.lists(scalars, max_size=2), scalars)
envelopes = st.fixed_dictionaries(
    {},
    optional={"resource": names, "event": events, "timestamp": timestamps, "token": tokens, "data": datas},
)


@settings(max_examples=3000, deadline=None)
@given(envelopes)
def test_clearly_valid_implies_valid_for_the_schema(envelope):
    if clearly_valid(envelope):
        assert webhook_validator().is_valid(envelope), envelope


def test_quick_path_accepts_the_sample_webhooks():
    import json

    from tests.conftest import FIXTURES

    assert all(clearly_valid(json.loads(p.read_text())) for p in FIXTURES.glob("*.json"))
