"""An audit that accepts everything: it passes the smoke test and the correct black boxes only."""
# expect: {"q5_audit": 1.5}


def audit_release(release):
    return True
