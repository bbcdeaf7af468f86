"""A fix for a Faust recovery race that loses messages after a restart.

faust-streaming 0.15's `Recovery.on_recovery_completed` resumes the stream partitions and
only then seeks them to their committed offsets. When a worker restarts with state in its
changelogs and a backlog on its source topics, the fetcher delivers records in between;
the seek then re-reads them, Faust's read-offset check drops the re-read ones as already
seen, and the first records after the committed offset are acked without ever reaching
the agent (tests/integration/test_restart.py lost 6 to 88 of 300 notifications per
restart). Seeking first, then resuming, closes the window: measured 0 lost in every run.
Upstream discussion of the same family of races: faust-streaming/faust#216, #596.

The method below is upstream's with the seek moved before the resume; nothing else
changed. Remove this module when Faust orders them correctly.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery


class SeekBeforeResumeRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
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
