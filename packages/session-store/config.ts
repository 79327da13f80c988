// Copyright 2026 the Valise authors. Apache-2.0 license.
import {
  formatRequirements,
  normalizeIndexUrl,
  parseRequirements,
  RequirementError,
} from "@valise/protocol";
import { SessionError } from "./errors.ts";

/** The config key that chooses a session's Python interpreter (Spark 3.5+). */
export const PYTHON_EXEC_KEY = "spark.sql.execution.pyspark.python";
/** Config keys under this prefix become environment variables of the session's workers. */
export const PYTHON_WORKER_ENV_PREFIX = "spark.pythonWorkerEnv.";

/**
 * Values for the keys PySpark reads before its first real operation. Spark fails `Get` on an
 * unknown key, and PySpark calls `int()`/`bool()` on several of these, so they must exist.
 */
export const DEFAULT_CONFIG: Readonly<Record<string, string>> = {
  "spark.sql.session.timeZone": "UTC",
  "spark.sql.timestampType": "TIMESTAMP_LTZ",
  "spark.sql.ansi.enabled": "true",
  "spark.sql.session.localRelationCacheThreshold": "1048576",
  "spark.sql.session.localRelationSizeLimit": "3221225472",
  "spark.sql.session.localRelationChunkSizeRows": "10000",
  "spark.sql.session.localRelationChunkSizeBytes": "16777216",
  "spark.sql.session.localRelationBatchOfChunksSizeBytes": "1073741824",
  "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
  "spark.sql.execution.arrow.useLargeVarTypes": "false",
  "spark.sql.execution.pandas.convertToArrowArraySafely": "true",
  "spark.sql.execution.pandas.inferPandasDictAsMap": "false",
  "spark.sql.pyspark.inferNestedDictAsStruct.enabled": "false",
  "spark.sql.pyspark.legacy.inferArrayTypeFromFirstElement.enabled": "false",
  "spark.sql.pyspark.legacy.inferMapTypeFromFirstPair.enabled": "false",
  "spark.sql.artifact.isolation.enabled": "true",
  // Read by PySpark around UDFs and toPandas (ExecutePlan's Python-UDF subset), with Spark's
  // defaults.
  "spark.sql.execution.pythonUDF.arrow.enabled": "false",
  "spark.sql.execution.pandas.structHandlingMode": "legacy",
  "spark.sql.execution.arrow.pyspark.selfDestruct.enabled": "false",
  // Read by PySpark 4.2 when a session starts: when to compress plans, and whether to show the
  // server's stack traces (Valise sends none).
  "spark.connect.session.planCompression.threshold": "10485760",
  "spark.connect.session.planCompression.defaultAlgorithm": "ZSTD",
  "spark.sql.connect.serverStacktrace.enabled": "true",
};

/**
 * Keys a session may not change: they describe the server, not the session. Spark answers
 * `CANNOT_MODIFY_CONFIG` for such keys too. (The `spark.connect.session.*` keys of
 * {@linkcode DEFAULT_CONFIG} are session configs in Spark, and stay modifiable.)
 */
const STATIC_PREFIXES = ["spark.connect.", "spark.driver.", "spark.executor.", "spark.master"];

/** SQL configs Spark defines without a default: `Get` answers them with no value. */
const DEFINED_WITHOUT_DEFAULT: ReadonlySet<string> = new Set([
  PYTHON_EXEC_KEY,
  "spark.valise.pip.requirements",
  "spark.valise.pip.indexUrl",
  "spark.valise.pip.extraIndexUrls",
]);

/** Where Spark's `CANNOT_MODIFY_CONFIG` message sends the reader. */
const SPARK_DOC_ROOT = "https://spark.apache.org/docs/latest";

/**
 * The types of the defaults PySpark parses (`int()`, `bool`): a value that does not parse is
 * refused when set, as Spark refuses it, instead of breaking the client when it reads it back.
 */
const TYPES: Readonly<Record<string, "boolean" | "int" | "timezone">> = {
  "spark.sql.session.timeZone": "timezone",
  "spark.sql.ansi.enabled": "boolean",
  "spark.sql.session.localRelationChunkSizeRows": "int",
  "spark.sql.execution.arrow.maxRecordsPerBatch": "int",
  "spark.sql.execution.arrow.useLargeVarTypes": "boolean",
  "spark.sql.execution.pandas.convertToArrowArraySafely": "boolean",
  "spark.sql.execution.pandas.inferPandasDictAsMap": "boolean",
  "spark.sql.pyspark.inferNestedDictAsStruct.enabled": "boolean",
  "spark.sql.pyspark.legacy.inferArrayTypeFromFirstElement.enabled": "boolean",
  "spark.sql.pyspark.legacy.inferMapTypeFromFirstPair.enabled": "boolean",
  "spark.sql.artifact.isolation.enabled": "boolean",
  "spark.sql.connect.serverStacktrace.enabled": "boolean",
};

/** The prefix of Valise's own session configs. */
export const VALISE_CONFIG_PREFIX = "spark.valise.";

/**
 * Valise's own session configs and the unit of each: limits a session may lower (never raise)
 * for its own workers, and the workers one ExecutePlan of the session's UDFs spreads its batches
 * over (clamped by the server as Apply's parallelism is). Each takes a positive whole number; a key under `spark.valise.` that is
 * not here is refused, since a typo would otherwise be accepted and then ignored.
 */
export const VALISE_CONFIG_KEYS: Readonly<Record<string, "milliseconds" | "bytes" | "count">> = {
  "spark.valise.worker.timeoutMs": "milliseconds",
  "spark.valise.worker.interactiveTimeoutMs": "milliseconds",
  "spark.valise.worker.maxConcurrent": "count",
  "spark.valise.worker.memoryBytes": "bytes",
  "spark.valise.worker.outputBytes": "bytes",
  "spark.valise.worker.processes": "count",
  "spark.valise.worker.sandboxMemoryBytes": "bytes",
  "spark.valise.worker.streamBytes": "bytes",
  "spark.valise.udf.parallelism": "count",
};

/** The config key holding a session's `pip install` requirement set (one per line). */
export const PIP_REQUIREMENTS_KEY = "spark.valise.pip.requirements";
/** The config key naming the package index a session installs from (one the server offers). */
export const PIP_INDEX_URL_KEY = "spark.valise.pip.indexUrl";
/** The config key naming more indexes a session installs from (space- or comma-separated). */
export const PIP_EXTRA_INDEX_URLS_KEY = "spark.valise.pip.extraIndexUrls";
/**
 * What a certain environment mismatch does when an archive or PEX is added: `fail` (the
 * default) refuses the add, `warn` records a warning and adds it.
 */
export const ENV_CHECKS_KEY = "spark.valise.env.checks";

/** Most extra indexes a session may name. */
const MAX_EXTRA_INDEXES = 8;

/** Valise's session configs that hold text, and what each holds. */
export const VALISE_TEXT_CONFIG_KEYS: Readonly<Record<string, "requirements" | "url" | "urls">> = {
  [PIP_REQUIREMENTS_KEY]: "requirements",
  [PIP_INDEX_URL_KEY]: "url",
  [PIP_EXTRA_INDEX_URLS_KEY]: "urls",
};

/**
 * The extra index URLs of a `spark.valise.pip.extraIndexUrls` value, normalized.
 *
 * @param value The value.
 * @returns The URLs (none for `""`).
 * @throws {RequirementError} When one is not an index URL.
 */
export function splitIndexUrls(value: string): string[] {
  return value.split(/[\s,]+/).filter((u) => u !== "").map(normalizeIndexUrl);
}

/** Environment names a session may not set for its workers: the launcher owns them. */
const RESERVED_ENV = new Set([
  "PATH",
  "HOME",
  "PYTHONPATH",
  "PYTHONHOME",
  "PYTHONNOUSERSITE",
  "PYTHONUNBUFFERED",
  "PEX_ROOT",
  "PEX_INTERPRETER",
  "LD_PRELOAD",
  "LD_LIBRARY_PATH",
]);

/** An optional config value: `undefined` means "no value" (sent as an absent field). */
export type ConfigValue = string | undefined;

/**
 * A session's configuration with Spark Connect's semantics: explicit values over defaults,
 * `Get` of an unknown key is an error, `GetOption` leaves absent values unset.
 */
export class SessionConfig {
  #values: Map<string, string>;
  #onChange: () => Promise<void>;

  /**
   * @param initial Values set earlier (restored from the session's manifest).
   * @param onChange Called after every change, to persist it.
   */
  constructor(initial: Record<string, string>, onChange: () => Promise<void>) {
    this.#values = new Map(Object.entries(initial));
    this.#onChange = onChange;
  }

  /** The explicitly set values, for persisting. */
  toJSON(): Record<string, string> {
    return Object.fromEntries(this.#values);
  }

  /** The value of `key`, explicit or default, or `undefined`. */
  value(key: string): string | undefined {
    return this.#values.get(key) ?? DEFAULT_CONFIG[key];
  }

  /**
   * Sets pairs. With `silent`, a refused pair becomes a warning and the others are still set;
   * without it the first refused pair fails the call and nothing is set.
   *
   * @returns Warnings to return to the client.
   */
  async set(pairs: { key: string; value: ConfigValue }[], silent: boolean): Promise<string[]> {
    const warnings: string[] = [];
    const accepted: [string, string][] = [];
    for (const { key, value } of pairs) {
      try {
        checkSettable(key, value);
        accepted.push([key, value ?? ""]);
      } catch (e) {
        if (!silent) throw e;
        const msg = e instanceof Error ? e.message : String(e);
        warnings.push(
          `Failed to set ${key} to ${
            value === undefined ? "None" : `Some(${value})`
          } due to ${msg}`,
        );
      }
    }
    for (const [k, v] of accepted) this.#values.set(k, v);
    if (accepted.length) await this.#onChange();
    return warnings;
  }

  /**
   * Replaces every explicit value without persisting (the caller read them from where they
   * persist: a cluster's registry), e.g. after another node changed them.
   */
  reset(values: Readonly<Record<string, string>>): void {
    this.#values = new Map(Object.entries(values));
  }

  /** Values of `keys`; every key must have a value (explicit or default). */
  get(keys: string[]): { key: string; value: ConfigValue }[] {
    return keys.map((key) => {
      const value = this.value(key);
      if (value === undefined && !DEFINED_WITHOUT_DEFAULT.has(key)) {
        throw new SessionError(
          "SQL_CONF_NOT_FOUND",
          `The SQL config "${key}" cannot be found. Please verify that the config exists.`,
          { parameters: { sqlConf: `"${key}"` } },
        );
      }
      return { key, value };
    });
  }

  /**
   * Values of keys, each falling back to the default given with it; a default of the wrong
   * type for a typed key is refused, as Spark refuses it.
   */
  getWithDefault(
    pairs: { key: string; value: ConfigValue }[],
  ): { key: string; value: ConfigValue }[] {
    for (const { key, value } of pairs) if (value !== undefined) checkType(key, value);
    return pairs.map(({ key, value }) => ({ key, value: this.value(key) ?? value }));
  }

  /** Values of keys; absent ones stay unset. */
  getOption(keys: string[]): { key: string; value: ConfigValue }[] {
    return keys.map((key) => ({ key, value: this.value(key) }));
  }

  /**
   * The explicitly set values under `prefix`, with the prefix stripped: as Spark's `GetAll`,
   * defaults are not listed.
   */
  getAll(prefix: string | undefined): { key: string; value: string }[] {
    const p = prefix ?? "";
    return [...this.#values].filter(([k]) => k.startsWith(p))
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => ({ key: k.slice(p.length), value: v }));
  }

  /** Removes explicit values; defaults show through again. */
  async unset(keys: string[]): Promise<void> {
    let changed = false;
    for (const k of keys) {
      if (isStatic(k)) throw cannotModify(k);
      changed = this.#values.delete(k) || changed;
    }
    if (changed) await this.#onChange();
  }

  /**
   * `"true"` or `"false"` for each key: as in Spark, `true` for the session's SQL configs
   * (`spark.sql.*` and the defaults above) and `false` for the server's and for keys that are
   * no config of Spark's (which a session may still set, as in Spark).
   */
  isModifiable(keys: string[]): { key: string; value: string }[] {
    return keys.map((key) => {
      const sessionConf = Object.hasOwn(DEFAULT_CONFIG, key) ||
        DEFINED_WITHOUT_DEFAULT.has(key) || key.startsWith("spark.sql.");
      return { key, value: String(sessionConf && !isStatic(key)) };
    });
  }

  /** The session's `spark.pythonWorkerEnv.<NAME>` entries as an environment. */
  workerEnv(): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [k, v] of this.#values) {
      if (!k.startsWith(PYTHON_WORKER_ENV_PREFIX)) continue;
      const name = k.slice(PYTHON_WORKER_ENV_PREFIX.length);
      // A session restored from an older manifest may hold a name refused since.
      if (!RESERVED_ENV.has(name)) env[name] = v;
    }
    return env;
  }
}

function isStatic(key: string): boolean {
  return STATIC_PREFIXES.some((p) => key.startsWith(p)) && !Object.hasOwn(DEFAULT_CONFIG, key);
}

function cannotModify(key: string): SessionError {
  return new SessionError(
    "CANNOT_MODIFY_CONFIG",
    `Cannot modify the value of the config "${key}": it is set by the server.`,
    { parameters: { key: `"${key}"`, docroot: SPARK_DOC_ROOT } },
  );
}

/** Whether a JVM would accept the zone: a region id, `UTC`/`GMT`/`Z`, or an offset. */
function isTimeZone(value: string): boolean {
  if (/^(?:Z|(?:UTC|GMT|UT)?[+-]\d{1,2}(?::?\d{2}){0,2}|UTC|GMT|UT)$/.test(value)) return true;
  try {
    new Intl.DateTimeFormat("en", { timeZone: value });
    return true;
  } catch {
    return false;
  }
}

/** Refuses a value that a typed key's type cannot parse, with Spark's classes. */
function checkType(key: string, value: string): void {
  const type = TYPES[key];
  if (type === "timezone" && !isTimeZone(value)) {
    throw new SessionError(
      "INVALID_CONF_VALUE.TIME_ZONE",
      `The value '${value}' in the config "${key}" is invalid. Cannot resolve the given ` +
        `timezone. Use a region id such as "Europe/Paris", or an offset such as "+01:00".`,
      { parameters: { confName: `"${key}"`, confValue: value } },
    );
  }
  const ok = type === "boolean"
    ? /^(?:true|false)$/i.test(value.trim())
    : type === "int"
    ? /^[+-]?\d{1,10}$/.test(value.trim()) && Math.abs(Number(value)) <= 2 ** 31 - 1
    : true;
  if (!ok) {
    throw new SessionError(
      "INVALID_CONF_VALUE.TYPE_MISMATCH",
      `The value '${value}' in the config "${key}" is invalid. It should be a/an '${type}' value.`,
      { parameters: { confName: `"${key}"`, confType: `"${type}"`, confValue: value } },
    );
  }
}

/**
 * Checks a key and value by the rules `Config` sets them with; used on values read back from
 * a store others can write.
 *
 * @throws {SessionError} The error setting it would have given.
 */
export function checkConfigEntry(key: string, value: string): void {
  checkSettable(key, value);
}

function checkSettable(key: string, value: ConfigValue): void {
  if (key === "") throw new SessionError("INVALID_CONF_VALUE", "The config key is empty.");
  if (isStatic(key)) throw cannotModify(key);
  if (value === undefined) {
    throw new SessionError(
      "INVALID_CONF_VALUE",
      `The config "${key}" was sent without a value. Send a value, or unset the key.`,
    );
  }
  checkType(key, value);
  if (key.startsWith(VALISE_CONFIG_PREFIX)) checkValiseKey(key, value);
  if (key.startsWith(PYTHON_WORKER_ENV_PREFIX)) {
    const name = key.slice(PYTHON_WORKER_ENV_PREFIX.length);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new SessionError(
        "INVALID_CONF_VALUE",
        `The config "${key}" must name an environment variable: "${name}" is not a valid name.`,
      );
    }
    if (RESERVED_ENV.has(name)) {
      throw new SessionError(
        "INVALID_CONF_VALUE",
        `The config "${key}" cannot set ${name}: the worker launcher controls it.`,
      );
    }
  }
  // deno-lint-ignore no-control-regex
  if (value !== undefined && /\u0000/.test(value)) {
    throw new SessionError(
      "INVALID_CONF_VALUE",
      `The value of the config "${key}" contains a NUL character.`,
    );
  }
}

/**
 * Refuses an unknown `spark.valise.*` key, a limit that is no positive whole number, and a
 * requirement set or index URL the pip rules refuse.
 */
function checkValiseKey(key: string, value: string): void {
  if (key === ENV_CHECKS_KEY) {
    if (value === "fail" || value === "warn") return;
    throw new SessionError(
      "INVALID_CONF_VALUE",
      `The value '${value.slice(0, 200)}' in the config "${key}" is invalid: it is "fail" ` +
        `(refuse an environment this server cannot run) or "warn" (add it with a warning).`,
      { parameters: { confName: `"${key}"`, confValue: value.slice(0, 200) } },
    );
  }
  const text = VALISE_TEXT_CONFIG_KEYS[key];
  if (text !== undefined) return checkTextKey(key, value, text);
  const unit = VALISE_CONFIG_KEYS[key];
  if (unit === undefined) {
    throw new SessionError(
      "INVALID_CONF_VALUE",
      `The config "${key}" is not one of Valise's: the spark.valise. keys are ` +
        `${
          [
            ...Object.keys(VALISE_CONFIG_KEYS),
            ...Object.keys(VALISE_TEXT_CONFIG_KEYS),
            ENV_CHECKS_KEY,
          ].join(", ")
        }. ` +
        `Check the spelling.`,
      { parameters: { confName: `"${key}"`, confValue: value.slice(0, 200) } },
    );
  }
  const n = /^\d{1,16}$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    const example = unit === "milliseconds" ? "60000" : unit === "bytes" ? "1073741824" : "4";
    throw new SessionError(
      "INVALID_CONF_VALUE.TYPE_MISMATCH",
      `The value '${value}' in the config "${key}" is invalid. It should be a positive whole ` +
        `number of ${unit}, e.g. ${example}; a value above the server's own limit means that ` +
        `limit.`,
      {
        parameters: { confName: `"${key}"`, confType: `"positive ${unit}"`, confValue: value },
      },
    );
  }
}

/** Checks a requirement set or index URL(s) by the rules the server installs them with. */
function checkTextKey(key: string, value: string, kind: "requirements" | "url" | "urls"): void {
  try {
    if (kind === "requirements") formatRequirements(parseRequirements(value));
    else if (kind === "url") normalizeIndexUrl(value);
    else {
      const urls = splitIndexUrls(value);
      if (urls.length > MAX_EXTRA_INDEXES) {
        throw new RequirementError(
          "TOO_MANY",
          "",
          `It names ${urls.length} indexes, the most is ${MAX_EXTRA_INDEXES}.`,
        );
      }
    }
  } catch (e) {
    if (!(e instanceof RequirementError)) throw e;
    throw new SessionError(
      "INVALID_CONF_VALUE",
      `The value of the config "${key}" is invalid. ${e.message}`,
      {
        cause: e,
        reason: e.problem,
        parameters: { confName: `"${key}"`, confValue: value.slice(0, 200) },
      },
    );
  }
}
