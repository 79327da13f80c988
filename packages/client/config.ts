// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type ConfigRequest_Operation,
  ConfigRequest_OperationSchema,
  type ConfigResponse,
} from "@valise/protocol";

/** Spark's runtime config of a session (`spark.conf`), over the Config RPC. */
export class RuntimeConfig {
  #call: (op: ConfigRequest_Operation) => Promise<ConfigResponse>;

  /**
   * Use `session.conf`.
   *
   * @param call Sends one config operation.
   */
  constructor(call: (op: ConfigRequest_Operation) => Promise<ConfigResponse>) {
    this.#call = call;
  }

  /**
   * Sets a key (booleans and numbers are sent as their text, like PySpark).
   *
   * @param key The key.
   * @param value The value.
   * @returns The server's warnings (empty when none).
   */
  async set(key: string, value: string | number | boolean): Promise<string[]> {
    const res = await this.#call(op({
      case: "set",
      value: { pairs: [kv(key, String(value))] },
    }));
    return res.warnings;
  }

  /**
   * Reads a key; without `defaultValue`, a missing key throws `SQL_CONF_NOT_FOUND`.
   *
   * @param key The key.
   * @param defaultValue Returned when the key is unset.
   * @returns The value.
   */
  async get(key: string, defaultValue?: string): Promise<string> {
    const res = defaultValue === undefined
      ? await this.#call(op({ case: "get", value: { keys: [key] } }))
      : await this.#call(op({
        case: "getWithDefault",
        value: { pairs: [kv(key, defaultValue)] },
      }));
    return res.pairs[0]?.value ?? defaultValue ?? "";
  }

  /**
   * Reads a key that may be unset.
   *
   * @param key The key.
   * @returns The value, or `undefined`.
   */
  async getOption(key: string): Promise<string | undefined> {
    const res = await this.#call(op({ case: "getOption", value: { keys: [key] } }));
    return res.pairs[0]?.value;
  }

  /**
   * Unsets keys.
   *
   * @param keys One key or several.
   * @returns When done.
   */
  async unset(keys: string | readonly string[]): Promise<void> {
    await this.#call(op({
      case: "unset",
      value: { keys: typeof keys === "string" ? [keys] : [...keys] },
    }));
  }

  /**
   * Every set key, or those under a prefix (which the server strips, as Spark does).
   *
   * @param prefix Only keys starting with it.
   * @returns Key → value.
   */
  async getAll(prefix?: string): Promise<Record<string, string>> {
    const res = await this.#call(op({
      case: "getAll",
      value: prefix === undefined ? {} : { prefix },
    }));
    const out: Record<string, string> = {};
    for (const p of res.pairs) out[p.key] = p.value ?? "";
    return out;
  }

  /**
   * Whether a session may change a key.
   *
   * @param key The key.
   * @returns `true` when it may.
   */
  async isModifiable(key: string): Promise<boolean> {
    const res = await this.#call(op({ case: "isModifiable", value: { keys: [key] } }));
    return res.pairs[0]?.value === "true";
  }
}

type OpInit = NonNullable<MessageInitShape<typeof ConfigRequest_OperationSchema>["opType"]>;

function op(opType: OpInit): ConfigRequest_Operation {
  return create(ConfigRequest_OperationSchema, { opType });
}

function kv(key: string, value: string): { key: string; value: string } {
  return { key, value };
}
