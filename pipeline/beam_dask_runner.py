"""Beam 2.77's DaskRunner with one change: a GroupByKey shuffles at most the pipeline's partitions.

Beam's translation of `Flatten` is `dask.bag.concat`, which adds up its inputs' partitions, and
its `GroupByKey` is a dask.bag task shuffle whose output has as many partitions as its input,
with about one split task per input partition and output partition (n squared, up to 32). The
data stages flatten their small side streams (dead-letter lines, stats, the "every file"
sentinels) into their GroupByKeys, so on a 2-worker cluster (4 partitions) ingest's last
GroupByKey shuffled 19 partitions: 725 split tasks for the run's three GroupByKeys, each a
round trip through the scheduler, which runs in this process on the same cores as the workers.
Here a GroupByKey whose input has more partitions than the pipeline's `--dask_npartitions` first
merges neighbouring partitions down to that many (`Bag.repartition`: a concatenation, no
shuffle), so each GroupByKey is a P x P shuffle. Which key lands in which group does not change,
only how the groups are spread over partitions, and the stages' writers sort each group
themselves, so the bytes written are the same.

The visitor below is Beam 2.77's `DaskRunner.to_dask_bag_visitor` (Apache License 2.0) with the
translation table as a parameter; Beam's runner reads a module-level table, which this process
should not patch for every other user of Beam. apache-beam is pinned to 2.77 in setup.py.
"""
from __future__ import annotations

import collections
import dataclasses

from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.dask import dask_runner, transform_evaluator
from apache_beam.runners.dask.overrides import _GroupByKeyOnly
from apache_beam.runners.dask.transform_evaluator import DaskBagWindowedIterator, Flatten, NoOp
from apache_beam.transforms.sideinputs import SideInputMap


class CappedGroupByKey(transform_evaluator.GroupByKey):
    """Beam's GroupByKey translation, on at most `npartitions` input partitions."""

    def apply(self, input_bag, side_inputs=None):
        cap = self.bag_kwargs.get("npartitions")
        if cap and input_bag.npartitions > cap:
            input_bag = input_bag.repartition(npartitions=cap)
        return super().apply(input_bag, side_inputs)


TRANSLATIONS = {**transform_evaluator.TRANSLATIONS, _GroupByKeyOnly: CappedGroupByKey}


@dataclasses.dataclass
class DaskBagVisitor(PipelineVisitor):
    """Each applied transform -> its dask.bag, through `translations` (Beam 2.77's visitor otherwise)."""
    bag_kwargs: dict
    translations: dict
    bags: dict = dataclasses.field(default_factory=collections.OrderedDict)

    def visit_transform(self, transform_node: AppliedPTransform) -> None:
        op_class = self.translations.get(transform_node.transform.__class__, NoOp)
        op = op_class(transform_node, bag_kwargs=self.bag_kwargs)

        op_kws = {"input_bag": None, "side_inputs": None}
        inputs = list(transform_node.inputs)
        if inputs:
            bag_inputs = []
            for input_value in inputs:
                if isinstance(input_value, pvalue.PBegin):
                    bag_inputs.append(None)
                prev_op = input_value.producer
                if prev_op in self.bags:
                    bag_inputs.append(self.bags[prev_op])
            if len(bag_inputs) == 1 and not isinstance(op, Flatten):
                op_kws["input_bag"] = bag_inputs[0]
            else:
                op_kws["input_bag"] = bag_inputs

        side_inputs = list(transform_node.side_inputs)
        if side_inputs:
            op_kws["side_inputs"] = [
                SideInputMap(type(si), si._view_options(),
                             DaskBagWindowedIterator(self.bags.get(si.pvalue.producer), si._window_mapping_fn))
                for si in side_inputs]

        self.bags[transform_node] = op.apply(**op_kws)


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner (its `run_pipeline` calls this visitor) with `CappedGroupByKey`."""

    @staticmethod
    def to_dask_bag_visitor(bag_kwargs=None) -> PipelineVisitor:
        return DaskBagVisitor(bag_kwargs=dict(bag_kwargs or {}), translations=TRANSLATIONS)
