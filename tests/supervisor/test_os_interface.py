"""The supervisor's seam to the OS is declared (traind.supervisor.os_interface.SupervisorOS): the
real object and the scripted fake both implement all of it, and the fake drives the warm spare."""
import inspect

from traind.supervisor.os_interface import SupervisorOS
from traind.supervisor.osproc import RealOS
from traind.supervisor.states import State

from .fakeos import FakeOS, exited, msg
from .test_loop_fake import run


def protocol_methods() -> dict:
    return {name: fn for name, fn in vars(SupervisorOS).items()
            if callable(fn) and not name.startswith("_")}


def mismatches(cls) -> list[str]:
    """What `cls` lacks of the Protocol, or where its parameters differ (names and kinds)."""
    out = []
    for name, fn in protocol_methods().items():
        mine = getattr(cls, name, None)
        if mine is None:
            out.append(f"{cls.__name__}.{name}: missing")
            continue
        want = [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]
        have = [(p.name, p.kind) for p in inspect.signature(mine).parameters.values()]
        if want != have:
            out.append(f"{cls.__name__}.{name}{inspect.signature(mine)} differs from {inspect.signature(fn)}")
    return out


def test_the_real_os_and_the_fake_implement_the_whole_protocol():
    assert len(protocol_methods()) == 15
    assert mismatches(RealOS) == []
    assert mismatches(FakeOS) == []
    assert not [n for n in dir(RealOS) if not n.startswith("_") and callable(getattr(RealOS, n))
                and n not in protocol_methods()], "a public RealOS method the Protocol does not declare"


def test_the_check_finds_a_fake_that_cannot_drive_the_spare():
    class Partial(FakeOS):
        promote_spare = None

        def discard_spare(self, everything):
            pass
    del Partial.promote_spare
    problems = mismatches(Partial)
    assert any("discard_spare" in p for p in problems), problems


def test_the_fake_drives_the_warm_spare_through_a_restart(tmp_path):
    def on_spawn(n):
        hello = [(0.1, msg("hello", pid=1000 + n, resumed_step=None))]
        beats = [(0.1 + 0.5 * i, msg("heartbeat", step=i, epoch=0, metrics={})) for i in range(1, 6)]
        return hello + beats + [(3.0, exited(code=1 if n == 1 else 0))]
    fake = FakeOS(on_spawn=on_spawn, spare_ready_after=0.5)
    sup, result, lines = run(tmp_path, fake, restart={"warm_spare": True})
    assert result.state is State.SUCCEEDED, lines
    assert len(fake.promoted) == 1 and fake.promoted[0][1]["attempt"] == 2, fake.promoted
    assert fake.spares_started and fake.spares_started[0] < fake.promoted[0][0]
    assert any("warm spare pid 5001 ready" in line for line in lines), lines
    assert fake.spares_discarded >= 1          # the one started behind attempt 2 goes at the end
