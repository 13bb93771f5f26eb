"""Watch events that only echo the operator's own writes wake no reconcile (`echoes`), including an echo that
arrives before the write's own answer; an event that was not ours is never lost."""

from registry_operator.echoes import Echoes

SERVICE = ("Service", "reg")
DEPLOYMENT = ("Deployment", "reg")


def _written(echoes: Echoes, child, version: str) -> None:
    echoes.sending(child)
    echoes.sent(child, version)


def test_the_event_of_our_own_write_is_an_echo_once() -> None:
    echoes = Echoes()
    _written(echoes, SERVICE, "10")
    assert echoes.echo(SERVICE, "MODIFIED", "10")
    assert not echoes.echo(SERVICE, "MODIFIED", "10")  # matched once: a second event is news


def test_other_events_are_news() -> None:
    echoes = Echoes()
    _written(echoes, SERVICE, "10")
    assert not echoes.echo(SERVICE, "MODIFIED", "11")  # someone else's write (or the controller's status)
    _written(echoes, SERVICE, "12")
    assert not echoes.echo(SERVICE, "DELETED", "12")
    assert not echoes.echo(("ConfigMap", "reg-config"), "MODIFIED", "12")  # never written by us
    assert not echoes.missed


def test_an_echo_heard_before_the_answer_is_judged_by_the_answer() -> None:
    echoes = Echoes()
    echoes.sending(SERVICE)
    assert echoes.echo(SERVICE, "ADDED", "10")  # the watch won the race
    echoes.sent(SERVICE, "10")
    assert not echoes.missed
    assert not echoes.echo(SERVICE, "MODIFIED", "11")  # the echo is spent: a later event is news


def test_a_change_heard_during_a_write_that_was_not_ours_is_missed_not_lost() -> None:
    echoes = Echoes()
    echoes.sending(SERVICE)
    echoes.sending(DEPLOYMENT)
    echoes.echo(SERVICE, "MODIFIED", "9")  # someone else's change, just before our write
    echoes.echo(SERVICE, "MODIFIED", "10")  # ours
    echoes.echo(DEPLOYMENT, "DELETED", "20")
    echoes.sent(SERVICE, "10")
    echoes.sent(DEPLOYMENT, None)  # the write failed
    assert echoes.missed == {SERVICE, DEPLOYMENT}
    echoes.clear()
    assert not echoes.missed


def test_the_echo_of_a_first_write_during_a_second_one_is_still_ours() -> None:
    echoes = Echoes()  # a reconcile that writes a child twice (a retired robot credential: a second apply pass)
    _written(echoes, SERVICE, "10")
    echoes.sending(SERVICE)
    assert echoes.echo(SERVICE, "MODIFIED", "10")
    assert echoes.echo(SERVICE, "MODIFIED", "11")
    echoes.sent(SERVICE, "11")
    assert not echoes.missed
