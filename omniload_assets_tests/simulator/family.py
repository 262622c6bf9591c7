"""Deterministic children of parent records: list and segment members, campaign messages, flow
actions and the actions' messages.

They live in the parent's hidden metadata (``members``, ``messages``, ``actions``, ``flow_messages``),
so a parent built, changed, added or deleted carries its children along. Like every record, the
children of record ``j`` are a pure function of (seed, table, j, the simulated range).
"""

from __future__ import annotations

from typing import Any

import orjson

from . import vocab
from .data import Built, Factory, Record, rel, self_links
from .ids import Draws, short_id, stable_hash, ulid
from .timeutil import US, value_us

#: Most children a parent gets; ``scale`` may change any of them (``{"flow-actions": 20}``).
CHILD_LIMITS: dict[str, int] = {
    "list-profiles": 250,
    "segment-profiles": 250,
    "campaign-messages": 2,
    "flow-actions": 5,
    "flow-messages": 2,
}
#: Membership kind -> the limit's name.
_MEMBER_LIMIT = {"lists": "list-profiles", "segments": "segment-profiles"}
#: Flow action types drawn (``send-email`` and ``time-delay`` twice as often).
ACTION_TYPES = (
    "send-email",
    "send-email",
    "time-delay",
    "time-delay",
    "send-sms",
    "send-mobile-push",
    "conditional-split",
)
#: Action type -> the channel of its messages.
SEND_CHANNELS = {"send-email": "email", "send-sms": "sms", "send-mobile-push": "push"}


def _between(d: Draws, lo: int, hi: int) -> int:
    """A whole-second instant in ``[lo, hi]`` (``lo`` when the range is empty)."""
    if hi <= lo:
        return lo
    us = lo + d.below(hi - lo + 1)
    return max(lo, us - us % US)


class Family:
    """Builds the children of one parent record and puts them in its metadata."""

    def __init__(self, factory: Factory, limits: dict[str, int]) -> None:
        self.factory = factory
        self.limits = limits

    def attach(self, table: str, j: int, built: Built) -> Built:
        """``built`` (record ``j`` of ``table``) with its children in ``built.meta``."""
        if table in _MEMBER_LIMIT:
            built.meta["members"] = self.members(table, j)
        elif table == "campaigns":
            self._campaign_messages(j, built)
        elif table == "flows":
            actions, messages = self.flow_children(j, built.record)
            built.meta["actions"] = actions
            built.meta["flow_messages"] = messages
        return built

    # -- members ------------------------------------------------------------------------
    def members(self, kind: str, j: int) -> dict[str, int]:
        """Profile id -> ``joined_group_at`` (epoch µs) of list or segment ``j``: every fifth one
        empty, the first one full (up to the limit), the rest in between."""
        factory = self.factory
        n = factory.counts.get("profiles", 0)
        cap = min(n, self.limits[_MEMBER_LIMIT[kind]])
        if cap <= 0 or j % 5 == 3:
            return {}
        d = Draws(stable_hash(factory.seed, kind, "members", j))
        size = cap if j == 0 else d.below(cap + 1)
        return {factory.profile_id(k): factory.key_time(d, m) for m, k in enumerate(d.sample(range(n), size))}

    # -- campaign messages --------------------------------------------------------------
    def _campaign_messages(self, j: int, built: Built) -> None:
        """Relationships for the factory's message, and a second (variant) message for some."""
        d = Draws(stable_hash(self.factory.seed, "campaign-messages", j))
        limit = self.limits["campaign-messages"]
        messages: list[Record] = list(built.meta.get("messages", []))[: max(0, limit)]
        if messages and len(messages) < limit and d.chance(0.35):
            messages.append(self._variant(j, messages[0]))
        for message in messages:
            self._message_relationships(d, message)
        built.meta["messages"] = messages
        data = [{"type": "campaign-message", "id": m["id"]} for m in messages]
        built.record["relationships"]["campaign-messages"]["data"] = data

    def _variant(self, j: int, first: Record) -> Record:
        created = value_us(first["attributes"]["created_at"]) or self.factory.start_us
        mid = ulid(created // 1000, stable_hash(self.factory.seed, "campaign-message", j, 1))
        definition = orjson.loads(orjson.dumps(first["attributes"]["definition"]))
        definition["label"] = f"{definition.get('label')} (variant B)"
        relationships = {"campaign": {**first["relationships"]["campaign"]}}
        relationships["campaign"]["links"] = rel("campaign-messages", mid, "campaign")["links"]
        return {
            "type": "campaign-message",
            "id": mid,
            "attributes": {**orjson.loads(orjson.dumps(first["attributes"])), "definition": definition},
            "relationships": relationships,
            "links": self_links("campaign-messages", mid),
        }

    def _message_relationships(self, d: Draws, message: Record) -> None:
        mid = str(message["id"])
        channel = message["attributes"]["definition"]["channel"]
        counts = self.factory.counts
        template: Any = ...
        if channel == "email" and counts.get("templates", 0):
            tid = self.factory.short("templates", d.below(counts["templates"]))
            template = {"type": "template", "id": tid}
        image: Any = ...
        if channel == "mobile_push" and counts.get("images", 0) and d.chance(0.5):
            image = {"type": "image", "id": self.factory.image_id(d.below(counts["images"]))}
        message["relationships"]["template"] = rel("campaign-messages", mid, "template", template)
        message["relationships"]["image"] = rel("campaign-messages", mid, "image", image)

    # -- flow actions and their messages ------------------------------------------------
    def flow_children(self, j: int, flow: Record) -> tuple[list[Record], dict[str, list[Record]]]:
        """Flow ``j``'s actions (1 to the limit, chained by ``links.next``) and each action's
        messages (none for delays and splits, one or two for sends)."""
        factory = self.factory
        d = Draws(stable_hash(factory.seed, "flow-actions", j))
        attributes = flow["attributes"]
        first = value_us(attributes.get("created")) or factory.start_us
        last = max(first, value_us(attributes.get("updated")) or first)
        limit = min(self.limits["flow-actions"], 100)
        count = 0 if limit <= 0 else 1 + d.below(limit)
        ids = [str(60_000_000 + j * 100 + k) for k in range(count)]
        actions: list[Record] = []
        messages: dict[str, list[Record]] = {}
        for k, aid in enumerate(ids):
            kind = str(d.pick(ACTION_TYPES))
            created = _between(d, first, last)
            stamps = (created, _between(d, created, last))
            sent = self._flow_messages(d, (j, k), aid, kind, stamps, str(attributes.get("name")))
            messages[aid] = sent
            following = ids[k + 1] if k + 1 < count else None
            actions.append(self._action(d, (str(flow["id"]), aid), kind, following, sent, stamps))
        return actions, messages

    def _action(
        self,
        d: Draws,
        ids: tuple[str, str],
        kind: str,
        following: str | None,
        sent: list[Record],
        stamps: tuple[int, int],
    ) -> Record:
        """A flow-action resource with its encoded definition; ``ids`` are the flow's and its own."""
        fid, aid = ids
        status = str(d.pick(("live", "live", "live", "draft", "manual", "disabled")))
        definition: Record = {"id": aid, "type": kind, "links": {"next": following}}
        if kind == "time-delay":
            unit = str(d.pick(("days", "hours", "minutes")))
            definition["data"] = {
                "unit": unit,
                "value": 1 + d.below(3 if unit == "days" else 24),
                "secondary_value": None,
                "timezone": "profile",
                "delay_until_time": None,
                "delay_until_weekdays": None,
            }
        elif kind == "conditional-split":
            definition["links"] = {"next_if_true": following, "next_if_false": None}
            definition["data"] = {"profile_filter": None}
        else:
            message = sent[0]["attributes"]["definition"] if sent else None
            definition["data"] = {"message": message, "status": status}
        refs = [{"type": "flow-message", "id": m["id"]} for m in sent]
        return {
            "type": "flow-action",
            "id": aid,
            "attributes": {
                "created": self.factory.stamp(stamps[0]),
                "updated": self.factory.stamp(stamps[1]),
                "definition": definition,
            },
            "relationships": {
                "flow": rel("flow-actions", aid, "flow", {"type": "flow", "id": fid}),
                "flow-messages": rel("flow-actions", aid, "flow-messages", refs),
            },
            "links": self_links("flow-actions", aid),
        }

    def _flow_messages(
        self, d: Draws, at: tuple[int, int], aid: str, kind: str, span: tuple[int, int], flow_name: str
    ) -> list[Record]:
        channel = SEND_CHANNELS.get(kind)
        if channel is None:
            return []
        wanted = 2 if channel == "email" and d.chance(0.3) else 1
        out = []
        for m in range(min(wanted, self.limits["flow-messages"])):
            mid = short_id(stable_hash(self.factory.seed, "flow-message", *at, m))
            name = f"{flow_name}: {channel.upper()} {at[1] + 1}" + (" (variant B)" if m else "")
            updated = _between(d, span[0], span[1])
            out.append(self._flow_message(d, mid, aid, channel, name, (span[0], updated)))
        return out

    def _flow_message(
        self, d: Draws, mid: str, aid: str, channel: str, name: str, stamps: tuple[int, int]
    ) -> Record:
        counts = self.factory.counts
        template = None
        if channel == "email" and counts.get("templates", 0):
            template = self.factory.short("templates", d.below(counts["templates"]))
        definition = _definition(d, channel, mid, name, template)
        template_rel = {"type": "template", "id": template} if template is not None else ...
        return {
            "type": "flow-message",
            "id": mid,
            "attributes": {
                "channel": channel,
                "created": self.factory.stamp(stamps[0]),
                "updated": self.factory.stamp(stamps[1]),
                "definition": definition,
            },
            "relationships": {
                "flow-action": rel("flow-messages", mid, "flow-action", {"type": "flow-action", "id": aid}),
                "template": rel("flow-messages", mid, "template", template_rel),
            },
            "links": self_links("flow-messages", mid),
        }


def _definition(d: Draws, channel: str, mid: str, name: str, template: str | None) -> Record:
    """An encoded flow message definition (FlowEmail, FlowSms or FlowPushNotification)."""
    common: Record = {"id": mid, "name": name, "smart_sending_enabled": True, "additional_filters": None}
    if channel == "email":
        return {
            **common,
            "from_email": "hello@shop.example.com",
            "from_label": "Example Shop",
            "reply_to_email": None,
            "cc_email": None,
            "bcc_email": None,
            "subject_line": str(d.pick(vocab.SUBJECTS)),
            "preview_text": None if d.chance(0.3) else "Don't miss out",
            "template_id": template,
            "transactional": False,
            "add_tracking_params": d.chance(0.5),
            "custom_tracking_params": None,
        }
    if channel == "sms":
        return {
            **common,
            "body": f"{name}: shop now {{{{ organization.url }}}}",
            "image_id": None,
            "dynamic_image": None,
            "shorten_links": True,
            "add_org_prefix": True,
            "add_info_link": True,
            "add_opt_out_language": d.chance(0.5),
            "sms_quiet_hours_enabled": True,
            "transactional": False,
            "template_id": None,
        }
    return {
        **common,
        "title": name,
        "body": "Tap to see what's new",
        "sound": d.chance(0.5),
        "badge": False,
        "on_open": "home",
        "push_type": "standard",
        "kv_pairs": None,
        "action_buttons": None,
    }
