"""The edges every device machine that asks the platform when it connects shares.

Log level, config and shadow ask for the platform's copy after every (re)connect, retry on a reply
timer and give up after a few asks, then listen for pushes; broadcast only tracks the connection.
They declare that here once, so the four machines agree on what a reconnect and a lost reply do,
and keep their own actions (what to ask, what to log when giving up) and the order of their edges.
"""

from __future__ import annotations

from ..fsm import ANY_STATE, Action, Connected, Disconnected, Guard, On, timer

REPLY_TIMER = "reply"
"""The timer an ask sets; when it fires before the answer, the machine asks again or gives up."""


def connection_edges(
    connected: str, ask: Action | None = None, *, offline: str = "offline"
) -> tuple[On, On]:
    """A (re)connect from any state goes to `connected` (asking there with `ask`, if given), a
    disconnect from any state to `offline`: what the platform said before may be stale now."""
    return On(Connected, ANY_STATE, connected, action=ask), On(Disconnected, ANY_STATE, offline)


def retry_edges(
    asking: str, answered: str, *, may_ask_again: Guard, ask_again: Action, give_up: Action
) -> tuple[On, On]:
    """The reply timer in `asking`: ask again while `may_ask_again`, else `give_up` and go to
    `answered`, listening for pushes with what the device had."""
    return (
        On(timer(REPLY_TIMER), asking, asking, guard=may_ask_again, action=ask_again),
        On(timer(REPLY_TIMER), asking, answered, action=give_up),
    )


def backoff(first: float, attempt: int) -> float:
    """Seconds to wait for the answer to ask number `attempt` (1, 2, ...): `first`, doubled on
    each retry, so a slow platform is not asked ever faster."""
    return first * 2.0 ** (attempt - 1)


__all__ = ["REPLY_TIMER", "backoff", "connection_edges", "retry_edges"]
