"""tools.diffbackup_argv: the command lines it reads give exactly argparse's namespace,
and it declines (None: argparse is asked) whatever it is not sure of."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.diffbackup import Failure, _marked_up, build_parser
from tools.diffbackup_argv import recognize


def _argparse(argv):
    return vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["-q", "full", "iscsi://h/iqn.x:t/0", "-o", "out.bk"],
    ["full", "iscsi://h/iqn.x:t/0", "-o", "out.bk", "-q"],
    ["full", "-o", "out.bk", "vol.img"],
    ["full", "vol.img", "--output=out.bk", "--force", "--target-side", "--no-s3-md5"],
    ["full", "vol.img", "-o", ""],
    ["full", "vol.img"],
    ["diff", "iscsi://h/iqn.x:t/0", "--scope", "2", "-o", "d.bk"],
    ["diff", "iscsi://h/iqn.x:t/0", "--scope=+3", "-o", "d.bk", "--quiet"],
    ["diff", "v", "--scope", "1", "--scope", "4", "-o", "a", "-o", "b"],
    ["restore", "iscsi://h/iqn.x:t/0", "full.bk", "d1.bk", "d2.bk"],
    ["restore", "-q", "dest", "f1", "f2"],
    ["restore", "dest"],
    ["restore", "dest", "f1", "--skip-generation", "1:2", "--skip-generation", "3"],
    ["--initiator-name", "iqn.2026-01.x:a", "full", "s", "-o", "f"],
    ["--initiator-name", "iqn.x:a", "full", "s", "--initiator-name=iqn.x:b", "-o", "f"],
    ["--s3-endpoint", "http://e", "-q", "restore", "d", "s3://b/k", "--s3-endpoint", "http://f"],
])
def test_the_common_forms_give_argparse_s_namespace(argv):
    got = recognize(argv)
    assert got is not None
    assert vars(got) == _argparse(argv)


@pytest.mark.parametrize("argv", [
    [], ["-h"], ["full", "--help"], ["full", "-h"], ["--version"],
    ["full", "s", "--out", "f"],                    # an abbreviation
    ["full", "s", "-of"], ["full", "s", "-o=f"], ["-qfull"], ["full", "s", "-qo", "f"],
    ["full", "s", "--quiet=yes"],
    ["full", "s", "-o", "-f"], ["full", "-", "-o", "f"], ["full", "s", "--", "-o"],
    ["full"], ["full", "a", "b", "-o", "f"],
    ["diff", "s", "-o", "f"],                       # --scope is required
    ["diff", "s", "--scope", "x", "-o", "f"], ["diff", "s", "--scope", "-1", "-o", "f"],
    ["full", "s", "--tape", "t"], ["full", "s", "-o", "f", "--part-size", "8M"],
    ["restore"], ["restore", "d", "--tape", "t", "--file", "1"],
    ["restore", "d", "-q", "f1"],                   # positionals split by an option
    ["verify", "f"], ["status", "s"], ["ful", "s", "-o", "f"],
])
def test_everything_else_is_left_to_argparse(argv):
    assert recognize(argv) is None


_WORDS = ["full", "diff", "restore", "verify", "s", "iscsi://h/iqn.x:t/0", "f.bk", "1", "2:3",
          "0", "+2", " 3", "x", "", "-1", "-", "--", "a=b", "x y"]
_OPTIONS = ["-q", "--quiet", "-o", "--output", "--scope", "--initiator-name", "--s3-endpoint",
            "--force", "--target-side", "--no-s3-md5", "--skip-generation", "--tape", "--file",
            "--out", "--sc", "-h", "--help", "-qo", "-of", "--quiet=1", "--output=o",
            "--scope=2", "--scope=", "--initiator-name=iqn.x:y", "--output=", "-o=f",
            "--record-size", "--part-size", "-x"]


def _line():
    word = st.sampled_from(_WORDS) | st.text(max_size=4)
    token = st.sampled_from(_OPTIONS) | word
    # Usually a main-options prefix, a command, then its tokens.
    return st.tuples(st.lists(st.sampled_from(["-q", "--quiet", "--initiator-name", "iqn.x:a",
                                               "--s3-endpoint", "e"]), max_size=3),
                     st.sampled_from(["full", "diff", "restore"]) | word,
                     st.lists(token, max_size=8)).map(lambda t: t[0] + [t[1]] + t[2])


def _likely_line():
    # Mostly well-formed lines: options with values, flags and positionals in any order.
    value = st.sampled_from(["1", "2", "+3", " 4", "0", "x", "", "1:2", "-1", "s3://b/k"])
    item = (st.tuples(st.sampled_from(["-o", "--output", "--scope", "--initiator-name",
                                       "--s3-endpoint", "--skip-generation"]), value)
            .map(list)
            | st.sampled_from(["-q", "--quiet", "--force", "--target-side", "--no-s3-md5",
                               "--scope=1", "--output=o.bk"]).map(lambda o: [o])
            | st.sampled_from(["iscsi://h/iqn.x:t/0", "v.img", "f.bk", "g.bk"]).map(lambda w: [w]))
    return st.tuples(st.lists(st.sampled_from([["-q"], ["--initiator-name", "iqn.x:a"]]),
                              max_size=2),
                     st.sampled_from(["full", "diff", "restore"]),
                     st.lists(item, min_size=1, max_size=6)).map(
        lambda t: sum(t[0], []) + [t[1]] + sum(t[2], []))


@settings(max_examples=3000, deadline=None)
@given(_line() | _likely_line())
def test_recognized_lines_equal_argparse_s_reading(argv):
    got = recognize(argv)
    if got is None:
        return
    try:
        want = _argparse(argv)
    except Failure as e:            # recognized a line argparse refuses
        raise AssertionError(f"{argv}: argparse refuses it ({e})") from None
    assert vars(got) == want, argv


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab :[]\u00a0\t\n\u2003x"), max_size=12))
def test_marked_up_is_the_regular_expression(text):
    import re
    assert _marked_up(text) == bool(re.search(r"[\[\]]|:\S+:", text))
