"""scsi_target/codes.py: the named codes every enumeration of the project is made of."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest

from scsi_target.codes import Code
from scsi_target.protocol.params import Kind, Scope
from scsi_target.protocol.pdu import Op, RejectReason, TmfFunction, TmfResponse
from scsi_target.scsi.command import Direction, Status, TaskAttr
from scsi_target.scsi.dispatch import Conflict
from scsi_target.scsi.layouts.sense import SenseKey
from scsi_target.scsi.reservations import PrType
from scsi_target.scsi.sense import SenseKey as SenseKeyAgain
from scsi_target.target.login import Stage, Status as LoginStatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Color(Code):
    RED = 1
    GREEN = 2
    VERT = 2            # an alias: the same member
    BLUE = 4
    _PRIVATE = 9        # not a member

    @property
    def warm(self) -> bool:
        return self is Color.RED


def test_members_are_ints_with_names():
    assert Color.RED == 1 and isinstance(Color.RED, int) and isinstance(Color.RED, Color)
    assert Color.RED.name == "RED" and Color.RED.value == 1 and type(Color.RED.value) is int
    assert Color.GREEN + 1 == 3 and hash(Color.BLUE) == hash(4)
    assert {Color.RED: "x"}[1] == "x"
    assert Color.RED.warm and not Color.BLUE.warm
    assert Color._PRIVATE == 9 and type(Color._PRIVATE) is int


def test_lookup_by_value_and_by_name():
    assert Color(2) is Color.GREEN and Color(Color.BLUE) is Color.BLUE
    assert Color(True) is Color.RED             # as IntEnum: True == 1
    for bad in (3, 9, "1", None, 1.5, [1]):
        with pytest.raises(ValueError, match="is not a valid Color"):
            Color(bad)
    assert Color["BLUE"] is Color.BLUE and Color["VERT"] is Color.GREEN
    with pytest.raises(KeyError):
        Color["PURPLE"]
    assert Color.__members__ == {"RED": Color.RED, "GREEN": Color.GREEN, "VERT": Color.GREEN,
                                 "BLUE": Color.BLUE}


def test_iteration_length_and_membership():
    assert list(Color) == [Color.RED, Color.GREEN, Color.BLUE]     # aliases once
    assert len(Color) == 3
    assert Color.RED in Color and 4 in Color
    assert 3 not in Color and "RED" not in Color and [1] not in Color


def test_text_forms():
    assert repr(Color.GREEN) == "<Color.GREEN: 2>"
    assert str(Color.GREEN) == "2" and f"{Color.BLUE}" == "4" and f"{Color.BLUE:02x}" == "04"
    assert f"{Color.RED.name} (0x{Color.RED:04x})" == "RED (0x0001)"


def test_members_survive_pickle_and_copy():
    for m in Color:
        assert pickle.loads(pickle.dumps(m)) is m
        assert copy.copy(m) is m and copy.deepcopy(m) is m
    assert pickle.loads(pickle.dumps(SenseKey.UNIT_ATTENTION)) is SenseKey.UNIT_ATTENTION


def test_members_cannot_be_reassigned():
    with pytest.raises(AttributeError, match="cannot reassign member 'RED'"):
        Color.RED = 5
    assert Color.RED == 1


def test_every_enumeration_of_the_target_and_initiator_is_a_code():
    for cls in (Op, RejectReason, TmfFunction, TmfResponse, SenseKey, Status, Direction,
                TaskAttr, PrType, Stage, LoginStatus, Kind, Scope, Conflict):
        assert issubclass(cls, Code), cls
        assert list(cls) and all(type(m) is cls and cls(int(m)) is m for m in cls)
    assert SenseKeyAgain is SenseKey
    # What callers read of them.
    assert Op(0x21) is Op.SCSI_RESPONSE and Op.SCSI_RESPONSE.name == "SCSI_RESPONSE"
    assert SenseKey(6).name == "UNIT_ATTENTION" and 0x10 not in SenseKey
    assert PrType(7).all_registrants and not PrType(1).all_registrants
    # Former string-valued enums: numbered from 1, so that no member is falsy.
    assert all(m for cls in (Kind, Scope, Conflict) for m in cls)


def test_a_code_class_is_made_without_enum():
    code = ("import sys\nfrom scsi_target.codes import Code\n"
            "class K(Code):\n    A = 1\n"
            "print(sorted(m for m in ('enum', 'functools', 'collections') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.stdout.strip() == "[]", r.stderr
