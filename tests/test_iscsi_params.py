"""Text codec and negotiation rules (RFC 7143 sections 6 and 13)."""
import pytest
from hypothesis import given, strategies as st

from scsi_target.protocol import params as K

key_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+@_")
keys = st.text(key_chars, min_size=1, max_size=K.MAX_KEY_LEN)
values = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                 max_size=60)


@given(st.lists(st.tuples(keys, values), max_size=20))
def test_text_round_trip(pairs):
    data = K.encode_text(pairs)
    assert data == b"" or data.endswith(b"\x00")
    assert K.decode_text(data) == pairs


@given(st.lists(st.tuples(keys, values), max_size=10), st.integers(0, 7))
def test_padding_is_ignored(pairs, pad):
    assert K.decode_text(K.encode_text(pairs) + b"\x00" * pad) == pairs


@given(st.binary(max_size=300), st.integers(1, 64))
def test_split_joins_back(data, limit):
    chunks = K.split_text(data, limit)
    assert b"".join(chunks) == data
    assert all(len(c) <= limit for c in chunks)
    assert len(chunks) >= 1


@given(st.binary(max_size=200))
def test_decode_never_crashes_on_garbage(data):
    try:
        K.decode_text(data)
    except K.TextError:
        pass


def test_golden_encoding():
    assert K.encode_text([("HeaderDigest", "None"), ("MaxBurstLength", "262144")]) == \
        b"HeaderDigest=None\x00MaxBurstLength=262144\x00"
    assert K.encode_text({"A": ""}) == b"A=\x00"


@pytest.mark.parametrize("bad", [
    b"NoEquals\x00",
    b"=value\x00",
    b"A=1\x00\x00B=2\x00",                     # empty string between NULs
    b"Bad Key=1\x00",
    b"K" * 64 + b"=1\x00",                      # key name over 63 bytes
    b"Key=" + b"v" * 256 + b"\x00",             # value over 255 bytes
    b"Key=\xff\xfe\x00",                        # not UTF-8
])
def test_malformed_text(bad):
    with pytest.raises(K.TextError):
        K.decode_text(bad)


def test_limits_accepted_at_the_edge():
    assert K.decode_text(b"K" * 63 + b"=" + b"v" * 255 + b"\x00") == [("K" * 63, "v" * 255)]
    long_c = "0x" + "ab" * 1024
    assert K.decode_text(f"CHAP_C={long_c}\x00".encode()) == [("CHAP_C", long_c)]


def test_total_text_limit():
    with pytest.raises(K.TextError):
        K.decode_text(b"A=1\x00" * (K.MAX_TEXT_LEN // 4 + 1))


def test_duplicate_keys():
    with pytest.raises(K.TextError):
        K.unique([("A", "1"), ("B", "2"), ("A", "1")])
    assert K.unique([("A", "1"), ("B", "2")]) == {"A": "1", "B": "2"}


@pytest.mark.parametrize("text,num", [("0", 0), ("8192", 8192), ("0x2000", 8192),
                                      ("0X10", 16), ("", None), ("-1", None), ("1e3", None),
                                      ("0x", None), ("abc", None), ("٣", None)])
def test_parse_number(text, num):
    assert K.parse_number(text) == num


# ---------------------------------------------------------------- rules
def neg(**policy):
    return K.Negotiation(policy=K.TargetPolicy(**policy))


@pytest.mark.parametrize("offer,answer", [
    ("None", "None"), ("CRC32C", "CRC32C"), ("CRC32C,None", "CRC32C"),
    ("None,CRC32C", "None"), ("MD5,CRC32C", "CRC32C"), ("MD5", "Reject"),
])
def test_list_first_acceptable(offer, answer):
    n = neg()
    assert n.respond("HeaderDigest", offer) == answer
    assert n.params.header_digest is (answer == "CRC32C")


def test_list_honours_our_acceptable_set():
    n = neg(digests=("None",))
    assert n.respond("DataDigest", "CRC32C,None") == "None"
    assert n.respond("HeaderDigest", "CRC32C") == "Reject"
    assert n.session_params().header_digest is False


@given(st.booleans(), st.booleans())
def test_boolean_and_or(offer, ours):
    n = neg(immediate_data=ours, initial_r2t=ours)
    off = "Yes" if offer else "No"
    assert n.respond("ImmediateData", off) == K.fmt_bool(offer and ours)
    assert n.respond("InitialR2T", off) == K.fmt_bool(offer or ours)
    p = n.session_params()
    assert p.immediate_data is (offer and ours)
    assert p.initial_r2t is (offer or ours)


@given(st.integers(512, 2**24 - 1), st.integers(512, 2**24 - 1))
def test_numeric_min(offer, ours):
    n = neg(max_burst_length=ours)
    assert n.respond("MaxBurstLength", str(offer)) == str(min(offer, ours))
    assert n.session_params().max_burst_length == min(offer, ours)


@given(st.integers(0, 3600), st.integers(0, 3600))
def test_numeric_max_and_min_times(offer, ours):
    n = neg(default_time2wait=ours, default_time2retain=ours)
    assert n.respond("DefaultTime2Wait", str(offer)) == str(max(offer, ours))
    assert n.respond("DefaultTime2Retain", str(offer)) == str(min(offer, ours))


@pytest.mark.parametrize("key,value", [
    ("MaxBurstLength", "511"), ("MaxBurstLength", "16777216"), ("MaxBurstLength", "x"),
    ("ErrorRecoveryLevel", "3"), ("MaxConnections", "0"), ("DefaultTime2Wait", "3601"),
    ("ImmediateData", "Maybe"), ("InitialR2T", "yes"), ("HeaderDigest", "Reject"),
    ("MaxOutstandingR2T", "0"),
])
def test_out_of_range_or_malformed_is_rejected(key, value):
    n = neg()
    assert n.respond(key, value) == "Reject"


def test_we_support_one_connection_and_erl0():
    n = neg()
    assert n.respond("MaxConnections", "8") == "1"
    assert n.respond("ErrorRecoveryLevel", "2") == "0"
    p = n.session_params()
    assert (p.max_connections, p.error_recovery_level) == (1, 0)


def test_first_burst_never_exceeds_max_burst():
    n = neg()
    assert n.respond("MaxBurstLength", "16384") == "16384"
    assert n.respond("FirstBurstLength", "65536") == "16384"
    n = neg()
    n.respond("FirstBurstLength", "65536")
    n.respond("MaxBurstLength", "4096")
    assert n.session_params().first_burst_length == 4096


def test_max_recv_data_segment_length_is_declarative_both_ways():
    n = neg(max_recv_data_segment_length=131072)
    assert n.respond("MaxRecvDataSegmentLength", "65536") is None
    p = n.session_params()
    assert p.max_xmit_data_segment_length == 65536      # what we may send
    assert p.max_recv_data_segment_length == 131072     # what we accept
    assert n.declarations() == [("MaxRecvDataSegmentLength", "131072")]
    assert neg().respond("MaxRecvDataSegmentLength", "100") == "Reject"
    big = neg()
    big.respond("MaxRecvDataSegmentLength", "0x1000000")  # 2**24: out of range, clamped
    assert big.session_params().max_xmit_data_segment_length == 2**24 - 1


def test_defaults_when_nothing_offered():
    p = neg().session_params()
    assert (p.header_digest, p.data_digest, p.max_xmit_data_segment_length,
            p.max_burst_length, p.first_burst_length, p.initial_r2t, p.immediate_data,
            p.max_outstanding_r2t, p.default_time2wait, p.default_time2retain) == \
        (False, False, 8192, 262144, 65536, True, True, 1, 2, 20)


def test_unknown_and_private_keys_not_understood():
    n = neg()
    assert n.respond("X-com.example.Foo", "1") == "NotUnderstood"
    assert n.respond("FooBar", "1") == "NotUnderstood"
    assert n.respond("OFMarkInt", "2048~8192") == "Irrelevant"


def test_markers_are_always_off():
    n = neg()
    assert n.respond("IFMarker", "Yes") == "No"
    assert n.respond("OFMarker", "No") == "No"


def test_target_only_keys_from_initiator_are_rejected():
    n = neg()
    for k in ("TargetAlias", "TargetAddress", "TargetPortalGroupTag", "SendTargets"):
        assert n.respond(k, "x") == "Reject"


def test_discovery_irrelevant_keys():
    n = K.Negotiation(discovery=True)
    assert n.respond("MaxBurstLength", "65536") == "Irrelevant"
    assert n.respond("InitialR2T", "No") == "Irrelevant"
    assert n.respond("HeaderDigest", "CRC32C,None") == "CRC32C"


def test_renegotiation_in_one_login_is_an_error():
    n = neg()
    n.respond("MaxBurstLength", "65536")
    with pytest.raises(K.NegotiationError):
        n.respond("MaxBurstLength", "65536")
