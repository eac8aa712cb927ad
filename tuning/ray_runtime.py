"""Ray itself: join a cluster or start a local Ray (dashboard on localhost, token auth), and share the feature
cache through the object store."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from modules.feature_cache import FeatureCache
from tuning.cli import warn
from tuning.settings import LOCALHOSTS, SearchSettings


def start_ray(s: SearchSettings) -> None:
    """Join ``s.address``, or start a local Ray with its dashboard on ``s.dashboard_host`` (localhost)."""
    if ray.is_initialized():
        return
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # unset: on for a local Ray; set to anything but token: off
    if auth_mode is not None and auth_mode.lower() != "token":
        warn(
            f"RAY_AUTH_MODE={auth_mode}: Ray's token authentication is off; anyone who reaches its ports can run "
            "code"
        )
    if s.address:
        ray.init(address=s.address, log_to_driver=False)
        print(f"joined the Ray cluster at {s.address}: {ray.cluster_resources()}")
        return
    if s.dashboard and s.dashboard_host not in LOCALHOSTS:
        warn(
            f"the Ray dashboard will listen on {s.dashboard_host}, not only on this machine. Ray's dashboard and "
            "job API run arbitrary code for whoever reaches them (the class of attacks on exposed, "
            "unauthenticated Ray dashboards, e.g. ShadowRay): keep token authentication on, and prefer an SSH "
            "tunnel to 127.0.0.1"
        )
    context = ray.init(
        include_dashboard=s.dashboard,
        dashboard_host=s.dashboard_host,
        dashboard_port=s.dashboard_port,
        log_to_driver=False,
        configure_logging=True,
        logging_level="warning",
    )
    if s.dashboard and context.dashboard_url:
        print(
            f"Ray dashboard: http://{context.dashboard_url}  (log in with the token in ~/.ray/auth_token, "
            "or `ray get-auth-token`)"
        )


@dataclass(frozen=True)
class StoredCache:
    """A feature cache put into Ray's object store once per experiment: ``ref`` for the trials, ``local`` for
    the driver (which refits on it): the store's zero-copy view, so the two hold one copy of the arrays."""

    local: FeatureCache
    ref: ray.ObjectRef


def share_cache(s: SearchSettings, cache: FeatureCache | None) -> StoredCache | None:
    """Put a freshly built cache into Ray's object store (None stays None)."""
    if cache is None:
        return None
    start_ray(s)
    ref = ray.put(cache)
    from ray.util.client import ray as client

    if client.is_connected():  # Ray Client: a get would copy the cache back over the network
        return StoredCache(cache, ref)
    return StoredCache(ray.get(ref), ref)
