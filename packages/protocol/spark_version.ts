// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * The Spark Connect version Valise speaks: the version of the real PySpark client and Spark
 * Connect server its conformance suite runs against, and what `spark.version` shows a client.
 *
 * @module
 */

/** The Spark (Connect) version Valise answers `AnalyzePlan.spark_version` with. */
export const SPARK_CONNECT_VERSION = "4.2.1";
