"""The cluster configuration: one YAML file declares every PostgreSQL cluster to protect.

The runbook's values are the defaults, so the shortest valid file is::

    clusters:
      - name: asso

A ``defaults:`` mapping at the top is merged into every cluster (handy for many clusters).

The package, each module importing only the ones above it (no cycle):

* :mod:`~pg_backups.config.declarations`: how a setting is declared (:func:`setting`) and read,
  the names (DAG ids, the backup asset) and the allowed values;
* :mod:`~pg_backups.config.schema`: the settings blocks of a cluster entry (``s3:``, ``pgbackrest:``, ...);
* :mod:`~pg_backups.config.cluster`: :class:`Cluster`, its cross-block checks and derived names;
* :mod:`~pg_backups.config.parsing`: entries to validated clusters, and the checks between clusters;
* :mod:`~pg_backups.config.loading`: the file, its cached parse and the last good copy.

Every name is imported from here (``from pg_backups.config import load_config``); a test that
replaces a private function patches it in the module that calls it.
"""

from pg_backups.config.cluster import Cluster as Cluster
from pg_backups.config.declarations import ALERT_CHANNELS as ALERT_CHANNELS
from pg_backups.config.declarations import BACKUP_ASSET as BACKUP_ASSET
from pg_backups.config.declarations import CLUSTER_PLACEHOLDER as CLUSTER_PLACEHOLDER
from pg_backups.config.declarations import DAG_KINDS as DAG_KINDS
from pg_backups.config.declarations import NAME_RE as NAME_RE
from pg_backups.config.declarations import PGBACKREST_COMPRESS_TYPES as PGBACKREST_COMPRESS_TYPES
from pg_backups.config.declarations import PGBACKREST_INCREMENTAL_TYPES as PGBACKREST_INCREMENTAL_TYPES
from pg_backups.config.declarations import TOOLS as TOOLS
from pg_backups.config.declarations import WALG_COMPRESSIONS as WALG_COMPRESSIONS
from pg_backups.config.declarations import Settings as Settings
from pg_backups.config.declarations import dag_kind as dag_kind
from pg_backups.config.declarations import setting as setting
from pg_backups.config.loading import _CACHE as _CACHE
from pg_backups.config.loading import CONFIG_ENV as CONFIG_ENV
from pg_backups.config.loading import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from pg_backups.config.loading import REPO_ROOT as REPO_ROOT
from pg_backups.config.loading import STATE_DIR_ENV as STATE_DIR_ENV
from pg_backups.config.loading import alert_for as alert_for
from pg_backups.config.loading import check_file as check_file
from pg_backups.config.loading import config_path as config_path
from pg_backups.config.loading import last_good_path as last_good_path
from pg_backups.config.loading import load_config as load_config
from pg_backups.config.loading import state_dir as state_dir
from pg_backups.config.parsing import Config as Config
from pg_backups.config.parsing import _resources as _resources
from pg_backups.config.parsing import build_cluster as build_cluster
from pg_backups.config.parsing import parse_config as parse_config
from pg_backups.config.parsing import with_overrides as with_overrides
from pg_backups.config.schema import FLEET_SIZE as FLEET_SIZE
from pg_backups.config.schema import REGION_PRICES as REGION_PRICES
from pg_backups.config.schema import SPREAD_SCHEDULES as SPREAD_SCHEDULES
from pg_backups.config.schema import AlertSettings as AlertSettings
from pg_backups.config.schema import Lifecycle as Lifecycle
from pg_backups.config.schema import MetricsSettings as MetricsSettings
from pg_backups.config.schema import PgBackRestSettings as PgBackRestSettings
from pg_backups.config.schema import Pool as Pool
from pg_backups.config.schema import RestoreTestSettings as RestoreTestSettings
from pg_backups.config.schema import S3Settings as S3Settings
from pg_backups.config.schema import ScheduleSpread as ScheduleSpread
from pg_backups.config.schema import StoragePrices as StoragePrices
from pg_backups.config.schema import Transition as Transition
from pg_backups.config.schema import VerifySettings as VerifySettings
from pg_backups.config.schema import WalgSettings as WalgSettings
from pg_backups.errors import ConfigError as ConfigError

__all__ = ["ConfigError", "Config", "Cluster", "Pool", "TOOLS", "DAG_KINDS", "dag_kind", "load_config", "parse_config",
           "build_cluster", "with_overrides", "config_path", "check_file", "alert_for", "FLEET_SIZE",
           "SPREAD_SCHEDULES"]
