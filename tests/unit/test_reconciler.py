"""The reconciler's reactions when the API fails."""

from __future__ import annotations

import pytest

from mailtrap_operator.kubeapi import ApiError
from mailtrap_operator.reconciler import api_problem


@pytest.mark.parametrize(
    ("error", "reason", "permanent"),
    [
        (ApiError(0, "Unreachable", "OSError"), "ApiUnavailable", False),
        (ApiError(503, "ServiceUnavailable", ""), "ApiUnavailable", False),
        (ApiError(422, "Invalid", "spec.x: bad"), "ApplyRejected", True),
        (ApiError(403, "Forbidden", 'cannot patch "deployments"'), "Forbidden", False),
    ],
)
def test_api_errors_are_reported_by_what_would_fix_them(
    error: ApiError, reason: str, permanent: bool
) -> None:
    problem = api_problem(error)
    assert (problem.reason, problem.permanent) == (reason, permanent)
    assert str(error) in problem.message
    if reason == "Forbidden":
        assert "RBAC" in problem.message
