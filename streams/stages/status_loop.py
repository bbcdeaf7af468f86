"""The status part's batched loop: status events and provider receipts, one consumer.

notifications.status   -> streams.stages.status.handle_status (state, batch fan-out, webhooks)
notifications.receipts -> streams.receipts.handle (checked against the state, deduplicated)

Both topics are keyed by notification id with the same partition count, so the loop holds
the same partition numbers of both: a receipt finds its notification's state in the
partition it is handled in. Runs on the status (or "all") worker, in a consumer group of its
own (`<app id>-loop`: Faust's group runs Faust's assignor); a partition that group never
committed on starts where the Faust agents of before stopped.
"""

from __future__ import annotations

from confluent_kafka import Message

from streams import receipts
from streams.runtime.app import app, catalog, settings
from streams.runtime.batch_loop import BatchLoop, Context, Output
from streams.runtime.loop_stage import TRANSIENT, LoopService, dead_letter_output, timed
from streams.stages.status import STAGE, _passing, handle_status, notification_state
from streams.webhooks import subscriptions as webhook_subscriptions

_receipts_topic = catalog.name("notifications.receipts")


GROUP = f"{app.conf.id}-loop"
_on_receipt = timed(receipts.STAGE, GROUP, receipts.handle)
_on_status = timed(STAGE, GROUP, handle_status)


async def _handle(message: Message, context: Context) -> None:
    if message.topic() == _receipts_topic:
        await _on_receipt(message, context)
    else:
        await _on_status(message, context)


def _dead_letter(message: Message, error: BaseException) -> Output:
    stage = receipts.STAGE if message.topic() == _receipts_topic else STAGE
    return dead_letter_output(stage, message, error)


status_loop = BatchLoop(
    name=STAGE,
    settings=settings,
    # Its own group: Faust's group runs Faust's assignor. A partition it never committed
    # on starts where the Faust agents of before stopped.
    group_id=GROUP,
    start_from_group=app.conf.id,
    topics=[catalog.name("notifications.status"), _receipts_topic],
    handler=_handle,
    dead_letter=_dead_letter,
    tables=[notification_state.changelog, receipts.receipts_seen.changelog],
    transient=TRANSIENT,
    # After a rebalance this worker may own other partitions: passing states of the ones it
    # lost would never be replaced by a final one here.
    on_rebalance=_passing.clear,
)


@app.service
class StatusLoop(LoopService):
    batch_loop = status_loop

    async def before_start(self) -> None:
        await webhook_subscriptions.ensure_ready()
