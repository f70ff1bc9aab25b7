"""The Celery app: ``celery -A revoker.worker worker|beat|flower``.

Configured from :func:`revoker.settings.get_settings` (REVOKER_* variables) when the configuration
is first needed, not at import time. :func:`celery_config` is the one place the reliability
settings live; the job publisher in :mod:`revoker.publisher` uses the same configuration.

Why each reliability setting:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after its
  task returned, and a task whose process died is requeued, so a killed worker loses nothing
  (with the defaults a killed task is lost: measured in DESIGN.md).
* ``worker_prefetch_multiplier=1``: a worker holds no more messages than it runs, so a crash
  strands at most the chunks in flight and idle workers can take the rest.
* one ``visibility_timeout`` for the broker and the result backend transport (Redis broker), and
  time limits below it: a task still running is never redelivered to a second worker.
* the redelivery cap is counted by the chunk task itself in Redis (see
  :mod:`revoker.tasks.fanout`), because RabbitMQ and Redis brokers count (or do not count)
  redeliveries differently.
"""

from __future__ import annotations

from typing import Any

from revoker._extras import requires_extra
from revoker.exceptions import ConfigurationError
from revoker.settings import RevokerSettings, get_settings

with requires_extra("worker", __name__):
    from celery import Celery, signals

__all__ = [
    "BEAT_EVENTS_SECONDS",
    "BEAT_EXPIRE_SECONDS",
    "BEAT_OUTBOX_SECONDS",
    "EXPIRY_SLICES",
    "app",
    "celery_config",
    "time_limits",
]

#: Beat period of ``expire_entries``.
BEAT_EXPIRE_SECONDS = 60.0
#: Slices of the session and mark buckets ``expire_entries`` reads, one per run: each bucket is
#: read every EXPIRY_SLICES * BEAT_EXPIRE_SECONDS (10 minutes).
EXPIRY_SLICES = 10
#: Beat period of ``publish_pending_jobs`` (the outbox sweep).
BEAT_OUTBOX_SECONDS = 5.0
#: Beat period of ``revoker.events_route`` (revoker.events.tasks: the most an event waits).
BEAT_EVENTS_SECONDS = 1.0


def time_limits(settings: RevokerSettings) -> tuple[int, int]:
    """(soft, hard) task time limits, below the visibility timeout: no live task is redelivered."""
    hard = max(5, int(settings.visibility_timeout * 0.8))
    soft = max(3, hard - max(2, hard // 10))
    return soft, hard


def _events_schedule(settings: RevokerSettings) -> dict[str, Any]:
    """revoker.events' beat entry: route revocations to event queues and start push deliveries,
    every second; none without a signing key (no transmitter: nothing to route)."""
    if settings.events_signing_key_file is None:
        return {}
    return {
        "revoker-events-route": {
            "task": "revoker.events_route",
            "schedule": BEAT_EVENTS_SECONDS,
            # A route missed is redone by the next: never let beat's backlog pile up.
            "options": {"expires": BEAT_EVENTS_SECONDS * 5},
        }
    }


def _queue_type(settings: RevokerSettings) -> dict[str, Any]:
    """RabbitMQ quorum queues when asked for (REVOKER_BROKER_QUEUE_TYPE, issue 15): the task queue
    is a replicated (Raft) queue that survives the loss of a broker node; publishes wait for the
    broker's confirm (else a message acknowledged by a node that then dies could be lost), and
    Celery drops the global QoS quorum queues refuse. Retries' countdowns are then held by the
    worker (as with classic queues here: the default direct exchange has no native delay)."""
    if settings.broker_queue_type != "quorum":
        return {}
    return {"task_default_queue_type": "quorum", "worker_detect_quorum_queues": True}


def celery_config(settings: RevokerSettings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    soft, hard = time_limits(settings)
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu restores unacked messages of dead workers only on this sweep; with its defaults
        # (10 s x 10) a short visibility timeout would still wait ~100 s.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        # A Sentinel-managed broker: the master's name (kombu's sentinel transport needs it).
        **settings.broker_transport_options,
        # Quorum queues (see _queue_type): publishes wait for the broker's confirm.
        **({"confirm_publish": True} if settings.broker_queue_type == "quorum" else {}),
    }
    return {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            **settings.result_backend_transport_options,
        },
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task killed by the hard time limit is requeued, not acknowledged: it then meets the
        # chunk's redelivery cap and is parked, instead of vanishing with its job left running.
        "task_acks_on_failure_or_timeout": False,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": settings.job_retention,
        # One queue per key prefix: deployments sharing a broker never run each other's tasks,
        # and revoker tasks stay apart from an application's own Celery tasks.
        "task_default_queue": settings.key_prefix,
        # Publishing must fail fast when the broker is down: the job stays pending in the outbox
        # and the sweeper publishes it later, instead of blocking the caller.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": 2.0,
        **_queue_type(settings),
        "timezone": "UTC",
        "beat_schedule": {
            "revoker-expire-entries": {
                "task": "revoker.expire_entries",
                "schedule": BEAT_EXPIRE_SECONDS,
                "args": (EXPIRY_SLICES,),
            },
            "revoker-publish-pending-jobs": {
                "task": "revoker.publish_pending_jobs",
                "schedule": BEAT_OUTBOX_SECONDS,
            },
            **_events_schedule(settings),
        },
    }


def _configuration() -> dict[str, Any]:
    """The app's configuration from the process-wide settings.

    Under the ``celery`` command (worker, beat, flower: it reads this while parsing its
    options) a configuration error is one line on stderr and exit 2, as ``revoker`` says it,
    never a traceback. Anywhere else (an application publishing a job) it is raised."""
    try:
        return celery_config(get_settings())
    except ConfigurationError as e:
        import click

        ctx = click.get_current_context(silent=True)
        if ctx is None or ctx.find_root().info_name != "celery":
            raise
        click.echo(f"Error: {e}", err=True)
        ctx.exit(2)


# ``include``: the worker imports the task package, whose modules register every task on ``app``.
app = Celery("revoker", include=["revoker.tasks", "revoker.events.tasks"])
# A promise: the settings are read when Celery first needs its configuration (in the worker, after
# the REVOKER_* environment is in place), never at import time.
app.add_defaults(_configuration)


# --- observability: logs, metrics, the surface revocations are counted under ------------------


def _worker_init(**_kwargs: Any) -> None:
    """The worker's main process: REVOKER_LOG_* and REVOKER_WORKER_METRICS_PORT's endpoint."""
    from revoker.logs import configure_logging
    from revoker.metrics import set_process_surface, start_worker_metrics_server

    settings = get_settings()
    configure_logging(settings)
    set_process_surface("job")  # a solo or threads pool runs tasks here
    start_worker_metrics_server(settings)


def _worker_process_init(**_kwargs: Any) -> None:
    """A prefork pool child: its own handler, and tasks count as surface "job" unless a task
    says otherwise (rotation follow-ups do)."""
    from revoker.logs import configure_logging
    from revoker.metrics import set_process_surface

    configure_logging(get_settings())
    set_process_surface("job")


def _worker_process_shutdown(pid: int | None = None, **_kwargs: Any) -> None:
    import os

    from revoker.metrics import worker_process_exited

    worker_process_exited(pid or os.getpid())


signals.worker_init.connect(_worker_init, weak=False)
signals.worker_process_init.connect(_worker_process_init, weak=False)
signals.worker_process_shutdown.connect(_worker_process_shutdown, weak=False)
