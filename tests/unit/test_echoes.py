"""Watch events that only echo the operator's own writes wake no reconcile (`Memory.echoes`)."""

from registry_operator.reconcile import Memory, merge_patch

SERVICE = ("Service", "reg")


def test_the_event_of_our_own_write_is_an_echo_once() -> None:
    memory = Memory("uid")
    memory.written[SERVICE] = "10"
    assert memory.echoes(SERVICE, "MODIFIED", "10")
    assert not memory.echoes(SERVICE, "MODIFIED", "10")  # matched once: a second event is news


def test_another_version_or_a_deletion_is_news_and_forgets_the_write() -> None:
    memory = Memory("uid")
    memory.written[SERVICE] = "10"
    assert not memory.echoes(SERVICE, "MODIFIED", "11")  # someone else's write (or the controller's status)
    assert SERVICE not in memory.written
    memory.written[SERVICE] = "12"
    assert not memory.echoes(SERVICE, "DELETED", "12")
    assert not memory.echoes(("ConfigMap", "reg-config"), "MODIFIED", "12")  # never written by us


def test_the_status_merge_patch_nulls_nested_keys_no_longer_published():
    old = {"garbageCollection": {"phase": "Idle", "nextScheduleTime": "t", "lastBlobsFreed": 3}, "endpoint": "e",
           "conditions": [{"type": "Ready"}]}
    new = {"garbageCollection": {"phase": "Idle"}, "conditions": [], "usage": {"bytes": 1}}
    assert merge_patch(old, new) == {"endpoint": None, "conditions": [], "usage": {"bytes": 1},
                                     "garbageCollection": {"nextScheduleTime": None, "lastBlobsFreed": None,
                                                           "phase": "Idle"}}
