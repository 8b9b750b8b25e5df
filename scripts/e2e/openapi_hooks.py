"""Schemathesis hooks for scripts/e2e-openapi (loaded through SCHEMATHESIS_HOOKS).

The one check of our own: no 5xx but the documented 502/503/504 (an upstream unreachable or
invalid, the database or journal away, an upstream timeout). A 500 is a bug whatever the
document says, so schemathesis' own `not_a_server_error` is replaced by this one.
"""

import schemathesis

ALLOWED_5XX = {502, 503, 504}


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    status = response.status_code
    if status >= 500 and status not in ALLOWED_5XX:
        raise AssertionError(
            f"{case.method} {case.path} answered {status}: {response.text[:300]!r}"
        )
