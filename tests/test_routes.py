"""The route table: one route per envelope family, queue names overridable by app settings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.envelope import Envelope, Kind, Platform
from shared.errors import RoutingError
from shared.routes import ROUTES, Route, RouteTable
from tests.factories import slack_event, teams_message
from worker.publish import build_message


def test_every_platform_kind_and_answerability_has_exactly_one_route() -> None:
    triples = [(p, k, r.responds) for r in ROUTES for p in [r.platform] for k in r.kinds]
    assert len(triples) == len(set(triples))
    assert {(Platform.SLACK, Kind.EVENTS_API, False), (Platform.TEAMS, Kind.INVOKE, True)} <= set(triples)


def test_envelopes_that_take_an_answer_travel_on_their_own_route() -> None:
    base = slack_event().model_dump()
    interactive = {**base, "kind": "interactive", "payload": {"type": "view_submission"}}
    assert ROUTES.route_for(Envelope.model_validate({**interactive, "accepts_response": True})).name == "slack_answers"
    assert ROUTES.route_for(Envelope.model_validate(interactive)).name == "slack_interactive"
    # a command always goes to its route, answerable or not
    command = {**base, "kind": "slash_commands", "payload": {"command": "/x"}}
    assert ROUTES.route_for(Envelope.model_validate(command)).name == "slack_commands"
    assert ROUTES.get("slack_answers").responds and ROUTES.get("teams_invokes").responds


def test_route_for_and_queue_name_override() -> None:
    route = ROUTES.route_for(slack_event())
    assert route.name == "slack_events"
    assert route.queue_name() == "slack-events"
    assert route.queue_name({"SLACK_EVENTS_QUEUE": "prod-slack-events"}) == "prod-slack-events"
    assert ROUTES.by_queue("prod-slack-events", {"SLACK_EVENTS_QUEUE": "prod-slack-events"}) is route


def test_session_queue_messages_always_get_a_session_id() -> None:
    env = slack_event(channel="C7", team="T7")
    msg = build_message(env, ROUTES.route_for(env))
    assert msg.session_id == "T7:C7"
    assert msg.message_id == env.dedupe_key
    no_conversation = env.model_copy(update={"conversation_key": None})
    assert ROUTES.get("slack_events").session_id(no_conversation) == "T7"
    assert ROUTES.get("slack_commands").session_id(env) is None


def test_teams_activity_goes_to_the_session_queue() -> None:
    env = teams_message(conversation="19:abc")
    route = ROUTES.route_for(env)
    assert route.name == "teams_activities"
    assert build_message(env, route).session_id == "19:abc"


def test_no_route_is_a_routing_error() -> None:
    table = RouteTable((ROUTES.get("slack_events"),))
    with pytest.raises(RoutingError):
        table.route_for(teams_message())


def test_table_rejects_bad_settings() -> None:
    base = ROUTES.get("slack_events")
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable((base, base))
    too_short = Route(
        name="x",
        queue="x",
        setting="X",
        platform=Platform.SLACK,
        kinds=frozenset({Kind.EVENTS_API}),
        duplicate_detection_window=timedelta(seconds=5),
    )
    with pytest.raises(ValueError, match="window"):
        RouteTable((too_short,))
