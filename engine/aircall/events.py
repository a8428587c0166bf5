"""The Aircall webhook events this engine knows, in the order Aircall's documentation lists them."""

ALL_EVENTS: tuple[str, ...] = (
    "number.created", "number.opened", "number.closed", "number.deleted",
    "contact.created", "contact.updated", "contact.deleted",
    "user.created", "user.opened", "user.connected", "user.closed", "user.disconnected", "user.deleted",
    "call.created", "call.answered", "call.hungup", "call.ended", "call.assigned", "call.archived",
    "call.tagged", "call.untagged", "call.commented", "call.transferred", "call.ringing_on_agent",
    "call.agent_declined", "call.voicemail_left",
)  # fmt: skip


def resource_of(event: str) -> str:
    """`call.ended` -> `call`: Aircall names every event after the resource it carries."""
    return event.partition(".")[0]
