"""Fixes for two Faust/aiokafka races that lose messages after a restart or rebalance.

1. Seek before resume. faust-streaming 0.15's `Recovery.on_recovery_completed` resumes the
stream partitions and only then seeks them to their committed offsets. When a worker
restarts with state in its changelogs and a backlog on its source topics, the fetcher
delivers records in between; the seek then re-reads them, Faust's read-offset check drops
the re-read ones as already seen, and the first records after the committed offset are
acked without ever reaching the agent (tests/integration/test_restart.py lost 6 to 88 of
300 notifications per restart). Seeking first, then resuming, closes the window: measured
0 lost in every run.
Upstream discussion of the same family of races: faust-streaming/faust#216, #596.

`on_recovery_completed` below is upstream's with the seek moved before the resume, plus
an explicit seek to the start for stream partitions that have no committed offset yet
(what `consumer_auto_offset_reset="earliest"` means), so their position never depends on
what the fetcher did while they were paused.

2. Fetch with a snapshot of the active partitions. Faust hands its *live* set of active
partitions to aiokafka's `fetched_records(partitions)`, which runs on the consumer thread
and treats an empty set as "every partition". When recovery pauses the last active
(changelog) partitions while that fetch is waiting, the set empties under it and aiokafka
drains the paused stream partitions; Faust then drops those records as inactive, but the
positions have moved past them. A partition without a committed offset kept that position,
so everything fetched in the window was skipped: after a SIGKILL, 9 to 170 of 200
notifications never reached `deliver` (tests/integration/test_batches.py, the kill test,
failed 1 run in 3). The consumer below passes a copy, and fetches nothing when it is empty.

Remove this module when Faust does both itself.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TransportT


class SeekBeforeResumeRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = cast(aiokafka_driver.Consumer, self.app.consumer)
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again (generation %s)", generation_id)
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            uncommitted = [
                tp
                for tp in assignment
                if not self._is_changelog_tp(tp) and consumer._committed_offset.get(tp) is None
            ]
            if uncommitted:
                self.log.info("Seek %d uncommitted stream partitions to start", len(uncommitted))
                await self._wait(
                    consumer._thread.seek_to_beginning(
                        *(TopicPartition(tp.topic, tp.partition) for tp in uncommitted)
                    ),
                    timeout=self.app.conf.broker_request_timeout,
                )
        # The fix: resume only once every stream partition sits at its committed offset.
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await cast(Any, self.app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class FixedTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeResumeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


class SnapshotFetchConsumer(aiokafka_driver.Consumer):
    async def _getmany(
        self,
        active_partitions: set[TP] | None,
        timeout: float,  # noqa: ASYNC109 (Faust's signature)
    ) -> Any:
        if active_partitions is None:  # a client-only app reads everything it is assigned
            return await super()._getmany(None, timeout)
        snapshot = set(active_partitions)
        if not snapshot:
            await asyncio.sleep(min(timeout, 0.1))
            return {}
        return await super()._getmany(snapshot, timeout)


class FixedTransport(aiokafka_driver.Transport):
    Consumer = SnapshotFetchConsumer


class FixedApp(faust.App):
    """faust.App on the aiokafka transport with the consumer above (`kafka://` brokers only)."""

    def _new_transport(self) -> TransportT:
        return FixedTransport(self.conf.broker_consumer, self)
