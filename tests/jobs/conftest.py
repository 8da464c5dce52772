import pytest

import jobhelpers


@pytest.fixture(scope="session", autouse=True)
def warm_zygote(tmp_path_factory):
    """One warm fork server for every job launched by these tests (see zygote.py)."""
    zygote = jobhelpers.Zygote(tmp_path_factory.mktemp("zygote"))
    jobhelpers.ZYGOTE = zygote
    yield zygote
    jobhelpers.ZYGOTE = None
    zygote.close()
