"""The conference and CTI methods (conference.*, cti.session.list) over the real socket: without
their services they answer "not available"; the rooms themselves, end to end with SIPp callers:
tests/conference; CTI sessions: tests/cti."""
from __future__ import annotations

import pytest

from adminrig import make_settings
from hpbx.admin.context import AdminContext
from hpbx.admin.protocol import NOT_AVAILABLE, RpcError


def test_conference_methods_without_the_service_answer_not_available(start_admin, tmp_path):
    st = start_admin(AdminContext(settings=make_settings(tmp_path)))
    calls = [("conference.list", {}), ("conference.participants", {"tenant": "t", "room": "1"}),
             ("conference.kick", {"tenant": "t", "room": "1", "call_id": "c"}),
             ("conference.mute", {"tenant": "t", "room": "1", "call_id": "c"}),
             ("conference.end", {"tenant": "t", "room": "1"}),
             ("conference.schedule", {"tenant": "t", "title": "x", "start": "2026-12-03T14:00:00+01:00",
                                      "duration": 30}),
             ("conference.scheduled", {}), ("conference.cancel", {"tenant": "t", "id": "x"}),
             ("conference.invite", {"tenant": "t", "room": "1", "target": "0441112233"})]
    with st.client() as c:
        for method, params in calls:
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == NOT_AVAILABLE and err.value.data["feature"] == "conference", method


def test_cti_session_list_without_the_cti_service_answers_not_available(start_admin, tmp_path):
    """The CTI sessions themselves, with a real WebSocket client: tests/cti."""
    st = start_admin(AdminContext(settings=make_settings(tmp_path)))
    with st.client() as c:
        with pytest.raises(RpcError) as err:
            c.call("cti.session.list", {})
        assert err.value.code == NOT_AVAILABLE and err.value.data["feature"] == "cti"


def test_followme_and_callthrough_methods_without_the_services_answer_not_available(start_admin, tmp_path):
    st = start_admin(AdminContext(settings=make_settings(tmp_path)))
    with st.client() as c:
        for method, params, feature in (("followme.state", {"number": "0441112233"}, "followme"),
                                         ("followme.set", {"number": "0441", "target": "0441"}, "followme"),
                                         ("followme.clear", {"number": "0441112233"}, "followme"),
                                         ("callthrough.prepare", {"username": "u", "destination": "0441"},
                                          "callthrough")):
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == NOT_AVAILABLE and err.value.data["feature"] == feature, method
