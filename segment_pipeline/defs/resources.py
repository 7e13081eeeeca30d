"""Resources shared by every stage: where the warehouse, the landing zone and the segments live."""

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The Parquet warehouse root (``SEGMENT_PIPELINE_WAREHOUSE``, default ``data/warehouse``)."""

    root: str

    def get(self) -> Warehouse:
        return Warehouse(self.root)


class LandingZoneResource(dg.ConfigurableResource):
    """Where raw daily files land: ``<root>/{profiles,events}/date=YYYY-MM-DD/<file>``."""

    root: str


class SegmentCatalogResource(dg.ConfigurableResource):
    """The segment definitions file (YAML, data not code)."""

    path: str

    def load(self):
        from segment_pipeline.core.segments import load_catalog

        return load_catalog(self.path)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "warehouse": WarehouseResource(root=settings.warehouse_root()),
            "landing": LandingZoneResource(root=settings.landing_root()),
            "segment_catalog": SegmentCatalogResource(path=settings.segments_file()),
        }
    )
