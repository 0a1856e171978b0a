"""Typed answers: what a handler returns to answer the platform synchronously (issue 10).

    @bot.slack.command("/ticket-count")
    async def count(ctx: SlackContext) -> CommandReply:
        return CommandReply("3 open tickets", response_type="ephemeral")

A handler for an envelope that accepts an answer (Slack `accepts_response_payload: true`, every Teams
invoke) may return one of these; `functions.triggers.process_message` turns it into a `shared.replies.Reply`
(`to_reply(correlation_id)`) and sends it to the worker that holds the socket, which puts it in the ack
(Slack `payload`) or the invoke completion (Teams `status` + `body`). Returning None keeps the plain ack.

Slack (the ack `payload`):

    SlackAck(payload)                    any payload, as given
    CommandReply(text, blocks=, response_type=)        slash command: {text, blocks, response_type}
    Options([Option("Ada", "U1"), ...])  external select (block_suggestion): {options: [...]}
    OptionGroups([OptionGroup("Team", [...])])         {option_groups: [...]}
    ViewErrors({"title": "Required"})    view_submission: {response_action: errors, errors: {block_id: message}}
    ViewUpdate(view) / ViewPush(view)    {response_action: update|push, view}
    ViewClear()                          {response_action: clear}

Teams (the invoke response: status and body):

    InvokeResponse(status, body)         any invoke
    MessageExtensionResult(attachments, layout="list")  composeExtension/query|queryLink|selectItem|submitAction:
                                         {composeExtension: {type: result, attachmentLayout, attachments}}
    AdaptiveCardResponse(card)           adaptiveCard/action: {statusCode: 200, type: ...card.adaptive, value: card}
    AdaptiveCardMessage(text)            adaptiveCard/action: {statusCode: 200, type: ...activity.message, value: text}
    TaskContinue(card=| url=, title=)    task/fetch, task/submit, composeExtension/fetchTask:
                                         {task: {type: continue, value: {card | url, title, ...}}}
    TaskMessage(text)                    {task: {type: message, value: text}}

Blocks, views, cards and options may be dicts or objects with `to_dict()` (slack_sdk's models). Values that
cannot be valid (a command answer with neither text nor blocks, an empty `errors`, more than 100 options)
raise `ValueError` when the answer is built, in the handler that built it. `shared.replies.problem()` is what
the worker checks; every type here produces answers that pass it.

These are plain classes (not dataclasses): the module is imported with the function app, and a dataclass costs
about 0.7 ms to create, which cold start would pay for each of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shared.replies import Reply

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
ACTIVITY_MESSAGE = "application/vnd.microsoft.activity.message"
THUMBNAIL_CARD = "application/vnd.microsoft.card.thumbnail"
HERO_CARD = "application/vnd.microsoft.card.hero"

MAX_OPTIONS = 100
"""Slack: at most 100 options (or option groups) in an external select's answer."""
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
RESPONSE_TYPES = ("ephemeral", "in_channel")

Layout = Literal["list", "grid"]
Size = int | Literal["small", "medium", "large"]


class _Value:
    """Equality and repr from `__slots__` (the answers are values)."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[tuple[str, Any], ...]:
        names = [name for cls in reversed(type(self).__mro__) for name in getattr(cls, "__slots__", ())]
        return tuple((name, getattr(self, name)) for name in names)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._fields())
        return f"{type(self).__name__}({shown})"


class Response(_Value):
    """An answer a handler returns. `to_reply_body()` is (status, body); `to_reply()` the `Reply` to send."""

    __slots__ = ()

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        raise NotImplementedError

    def to_reply(self, correlation_id: str) -> Reply:
        from shared.replies import Reply

        status, body = self.to_reply_body()
        return Reply(correlation_id=correlation_id, status=status, body=body)


def as_dict(value: Any, what: str) -> dict[str, Any]:
    """A JSON object from a dict or a model with `to_dict()` (slack_sdk blocks, views, options)."""
    if isinstance(value, Mapping):
        return dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return dict(result)
    raise TypeError(f"{what} must be a dict (or have to_dict()), got {type(value).__name__}")


def _dicts(values: Sequence[Any] | None, what: str) -> list[dict[str, Any]]:
    if values is None:
        return []
    if isinstance(values, str | bytes | Mapping):
        raise TypeError(f"{what} must be a list")
    return [as_dict(v, what) for v in values]


def plain_text(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


# -- Slack --------------------------------------------------------------------------------------------


class SlackAck(Response):
    """Any Slack ack payload, as given (None: a plain ack)."""

    __slots__ = ("payload",)

    def __init__(self, payload: Mapping[str, Any] | None = None) -> None:
        self.payload = payload

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, None if self.payload is None else dict(self.payload)


class CommandReply(Response):
    """A slash command's instant answer: `text` and/or `blocks`; `response_type` ephemeral (only the user
    sees it, Slack's default) or in_channel."""

    __slots__ = ("blocks", "response_type", "text")

    def __init__(
        self,
        text: str | None = None,
        blocks: Sequence[Any] | None = None,
        response_type: Literal["ephemeral", "in_channel"] | None = None,
    ) -> None:
        if not text and not blocks:
            raise ValueError("CommandReply needs text or blocks")
        if response_type is not None and response_type not in RESPONSE_TYPES:
            raise ValueError(f"response_type must be ephemeral or in_channel, got {response_type!r}")
        self.text = text
        self.blocks = blocks
        self.response_type = response_type

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        body: dict[str, Any] = {}
        if self.text:
            body["text"] = self.text
        if self.blocks:
            body["blocks"] = _dicts(self.blocks, "blocks")
        if self.response_type is not None:
            body["response_type"] = self.response_type
        return 200, body


class Option(_Value):
    """One option of an external select: `text` shown (≤ 75 characters), `value` sent back (≤ 150)."""

    __slots__ = ("description", "text", "value")

    def __init__(self, text: str, value: str, description: str | None = None) -> None:
        if not text or len(text) > MAX_OPTION_TEXT:
            raise ValueError(f"an option's text takes 1 to {MAX_OPTION_TEXT} characters, got {len(text)}")
        if not value or len(value) > MAX_OPTION_VALUE:
            raise ValueError(f"an option's value takes 1 to {MAX_OPTION_VALUE} characters, got {len(value)}")
        self.text = text
        self.value = value
        self.description = description

    def to_dict(self) -> dict[str, Any]:
        option: dict[str, Any] = {"text": plain_text(self.text), "value": self.value}
        if self.description:
            option["description"] = plain_text(self.description[:MAX_OPTION_TEXT])
        return option


class OptionGroup(_Value):
    """A labelled group of options (`OptionGroups`)."""

    __slots__ = ("label", "options")

    def __init__(self, label: str, options: Sequence[Option | Mapping[str, Any]]) -> None:
        self.label = label
        self.options = options

    def to_dict(self) -> dict[str, Any]:
        return {"label": plain_text(self.label[:MAX_OPTION_TEXT]), "options": _dicts(self.options, "options")}


class Options(Response):
    """An external select's options (`block_suggestion`): at most 100; an empty list shows "no results"."""

    __slots__ = ("options",)

    def __init__(self, options: Sequence[Option | Mapping[str, Any]] = ()) -> None:
        if len(options) > MAX_OPTIONS:
            raise ValueError(f"Slack takes at most {MAX_OPTIONS} options, got {len(options)}")
        self.options = options

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"options": _dicts(self.options, "options")}


class OptionGroups(Response):
    """An external select's options in labelled groups (at most 100 groups)."""

    __slots__ = ("groups",)

    def __init__(self, groups: Sequence[OptionGroup | Mapping[str, Any]] = ()) -> None:
        if len(groups) > MAX_OPTIONS:
            raise ValueError(f"Slack takes at most {MAX_OPTIONS} option groups, got {len(groups)}")
        self.groups = groups

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"option_groups": _dicts(self.groups, "option groups")}


class ViewErrors(Response):
    """A view submission refused: `{block_id: message}` shown under the inputs; the modal stays open."""

    __slots__ = ("errors",)

    def __init__(self, errors: Mapping[str, str]) -> None:
        if not errors:
            raise ValueError("ViewErrors needs at least one block_id: message")
        self.errors = errors

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"response_action": "errors", "errors": {str(k): str(v) for k, v in self.errors.items()}}


class ViewUpdate(Response):
    """Replace the submitted view with `view` (a dict, or a slack_sdk `View`)."""

    __slots__ = ("view",)

    def __init__(self, view: Any) -> None:
        self.view = view

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"response_action": "update", "view": as_dict(self.view, "view")}


class ViewPush(Response):
    """Push `view` on top of the modal's view stack."""

    __slots__ = ("view",)

    def __init__(self, view: Any) -> None:
        self.view = view

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"response_action": "push", "view": as_dict(self.view, "view")}


class ViewClear(Response):
    """Close every view of the modal."""

    __slots__ = ()

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"response_action": "clear"}


# -- Teams --------------------------------------------------------------------------------------------


class InvokeResponse(Response):
    """Any Teams invoke response: HTTP-like `status` and a JSON object `body` (None: no body)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int = 200, body: Mapping[str, Any] | None = None) -> None:
        if not 200 <= status <= 599:
            raise ValueError(f"an invoke response status is 200 to 599, got {status}")
        self.status = status
        self.body = body

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return self.status, None if self.body is None else dict(self.body)


def card_attachment(card: Any, *, preview: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An Adaptive Card as an attachment (message extension results, task modules); `preview` is what the
    compose box lists (see `preview_card`)."""
    attachment: dict[str, Any] = {"contentType": ADAPTIVE_CARD, "content": as_dict(card, "card")}
    if preview is not None:
        attachment["preview"] = dict(preview)
    return attachment


def preview_card(title: str, text: str | None = None) -> dict[str, Any]:
    """A thumbnail card attachment: the preview a message extension shows in its result list."""
    content: dict[str, Any] = {"title": title}
    if text:
        content["text"] = text
    return {"contentType": THUMBNAIL_CARD, "content": content}


class MessageExtensionResult(Response):
    """A message extension's results (`composeExtension/query`, `queryLink`, `selectItem`, `submitAction`):
    attachments (see `card_attachment`), listed or in a grid."""

    __slots__ = ("attachments", "layout")

    def __init__(self, attachments: Sequence[Mapping[str, Any]] = (), layout: Layout = "list") -> None:
        if layout not in ("list", "grid"):
            raise ValueError(f"layout must be list or grid, got {layout!r}")
        self.attachments = attachments
        self.layout = layout

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {
            "composeExtension": {
                "type": "result",
                "attachmentLayout": self.layout,
                "attachments": _dicts(self.attachments, "attachments"),
            }
        }


class AdaptiveCardResponse(Response):
    """An Adaptive Card `Action.Execute` answered with a card that replaces the one acted on."""

    __slots__ = ("card",)

    def __init__(self, card: Any) -> None:
        self.card = card

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"statusCode": 200, "type": ADAPTIVE_CARD, "value": as_dict(self.card, "card")}


class AdaptiveCardMessage(Response):
    """An Adaptive Card `Action.Execute` answered with a message the client shows (the card stays)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"statusCode": 200, "type": ACTIVITY_MESSAGE, "value": self.text}


class TaskContinue(Response):
    """A task module (dialog) to show: an Adaptive Card (`card`) or a web page (`url`)."""

    __slots__ = ("card", "height", "title", "url", "width")

    def __init__(
        self,
        card: Any = None,
        url: str | None = None,
        title: str | None = None,
        height: Size | None = None,
        width: Size | None = None,
    ) -> None:
        if (card is None) == (url is None):
            raise ValueError("TaskContinue takes a card or a url (one of them)")
        self.card = card
        self.url = url
        self.title = title
        self.height = height
        self.width = width

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        value: dict[str, Any] = {}
        if self.title:
            value["title"] = self.title
        if self.height is not None:
            value["height"] = self.height
        if self.width is not None:
            value["width"] = self.width
        if self.url is not None:
            value["url"] = self.url
        else:
            card = as_dict(self.card, "card")
            value["card"] = card if "contentType" in card else card_attachment(card)
        return 200, {"task": {"type": "continue", "value": value}}


class TaskMessage(Response):
    """Close the task module and show `text`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def to_reply_body(self) -> tuple[int, dict[str, Any] | None]:
        return 200, {"task": {"type": "message", "value": self.text}}


__all__ = [
    "ACTIVITY_MESSAGE",
    "ADAPTIVE_CARD",
    "AdaptiveCardMessage",
    "AdaptiveCardResponse",
    "CommandReply",
    "InvokeResponse",
    "MessageExtensionResult",
    "Option",
    "OptionGroup",
    "OptionGroups",
    "Options",
    "Response",
    "SlackAck",
    "TaskContinue",
    "TaskMessage",
    "ViewClear",
    "ViewErrors",
    "ViewPush",
    "ViewUpdate",
    "card_attachment",
    "preview_card",
]
