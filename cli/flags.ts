/**
 * `--key=value` command-line flags, as the PyTorch original's `args.py` takes
 * them: every key has a default, and a value must have the default's type.
 *
 * Parsing goes through `node:util` `parseArgs` (the design named
 * `jsr:@std/cli`, which our machines cannot reach).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { UsageError } from "./errors.ts";

/** How a flag's text becomes a value. */
export type FlagType = "int" | "float" | "bool" | "string";

/** One flag: its type, its default and one line of help. */
export interface FlagSpec {
  type: FlagType;
  default: number | boolean | string;
  help: string;
  /** The only values allowed, for string flags. */
  choices?: readonly string[];
  /** A string value must match this; `patternHelp` says what it allows. */
  pattern?: RegExp;
  patternHelp?: string;
  /** Smallest allowed value (inclusive) for numbers. */
  min?: number;
  /** Values must be strictly greater than `min`. */
  exclusiveMin?: boolean;
  /** Largest allowed value for numbers; `exclusiveMax` makes it strict. */
  max?: number;
  exclusiveMax?: boolean;
}

/** A script's flags by name. */
export type FlagSpecs = Record<string, FlagSpec>;

/** The value type one spec parses to: a number, a boolean, a choice or a string. */
export type FlagValue<S extends FlagSpec> = S["type"] extends "int" | "float" ? number
  : S["type"] extends "bool" ? boolean
  : S["choices"] extends readonly (infer C)[] ? C
  : string;

/** Parsed values, each typed by its spec. */
export type FlagValues<S extends FlagSpecs> = { -readonly [K in keyof S]: FlagValue<S[K]> };

function convert(
  key: string,
  text: string,
  spec: FlagSpec,
): number | boolean | string {
  let value: number | boolean | string = text;
  switch (spec.type) {
    case "bool": {
      const lower = text.toLowerCase();
      if (lower === "true" || lower === "1") value = true;
      else if (lower === "false" || lower === "0") value = false;
      else throw new UsageError(`--${key}=${text}: expected true or false`);
      break;
    }
    case "int":
    case "float": {
      value = text.trim() === "" ? NaN : Number(text);
      if (!Number.isFinite(value) || (spec.type === "int" && !Number.isInteger(value))) {
        throw new UsageError(
          `--${key}=${text}: expected ${spec.type === "int" ? "an integer" : "a number"}`,
        );
      }
    }
  }
  const problem = problemOf(value, spec);
  if (problem) {
    throw new UsageError(`--${key}=${typeof value === "number" ? text : value}: ${problem}`);
  }
  return value;
}

/** What is wrong with a value of the right type for `spec`, or null. */
function problemOf(value: number | boolean | string, spec: FlagSpec): string | null {
  if (typeof value === "string") {
    if (spec.choices && !spec.choices.includes(value)) {
      return `expected one of ${spec.choices.join(", ")}`;
    }
    if (spec.pattern && !spec.pattern.test(value)) return `expected ${spec.patternHelp}`;
    return null;
  }
  if (typeof value !== "number") return null;
  if (spec.type === "int" && !Number.isSafeInteger(value)) {
    // Beyond 2^53 neighbouring integers share one double: two values would be one.
    return "expected an integer between -(2^53 - 1) and 2^53 - 1 (larger ones are not exact)";
  }
  const low = spec.min !== undefined &&
    (spec.exclusiveMin ? value <= spec.min : value < spec.min);
  const high = spec.max !== undefined &&
    (spec.exclusiveMax ? value >= spec.max : value > spec.max);
  if (low || high) {
    const lower = spec.min === undefined ? "" : `${spec.exclusiveMin ? ">" : ">="} ${spec.min}`;
    const upper = spec.max === undefined ? "" : `${spec.exclusiveMax ? "<" : "<="} ${spec.max}`;
    return `must be ${[lower, upper].filter(Boolean).join(" and ")}`;
  }
  return null;
}

/**
 * What is wrong with `value`, read from a file rather than typed as a flag,
 * under `spec`'s rules (type, range, choices, pattern), or null if nothing.
 */
export function valueProblem(value: unknown, spec: FlagSpec): string | null {
  const typed = {
    int: [Number.isInteger(value), "an integer"],
    float: [Number.isFinite(value), "a number"],
    bool: [typeof value === "boolean", "true or false"],
    string: [typeof value === "string", "a string"],
  } as const;
  const [ok, expected] = typed[spec.type];
  return ok ? problemOf(value as number | boolean | string, spec) : `expected ${expected}`;
}

/**
 * Parses `--key=value` arguments against `specs` (`--key` alone for a
 * boolean means true).
 *
 * Returns every key (defaults filled in) and, separately, the keys the user
 * set, so presets can yield to explicit flags. Positional arguments are
 * returned when `allowPositionals` is set, otherwise they are an error.
 */
export function parseFlags<const S extends FlagSpecs>(
  args: string[],
  specs: S,
  options: { allowPositionals?: boolean } = {},
): { values: FlagValues<S>; given: Set<keyof S & string>; positionals: string[] } {
  const valid = `valid flags: ${Object.keys(specs).map((k) => `--${k}`).join(" ")}`;
  // A bare boolean flag, `--json`, means `--json=true`.
  const isBareBool = (arg: string) =>
    arg.startsWith("--") && Object.hasOwn(specs, arg.slice(2)) &&
    specs[arg.slice(2)].type === "bool";
  args = args.map((arg) => isBareBool(arg) ? `${arg}=true` : arg);
  for (const arg of args) {
    if (arg === "--help" || arg === "-h") throw new UsageError(valid);
    if (arg.startsWith("-") && !/^--[A-Za-z_][A-Za-z0-9_]*=/.test(arg)) {
      throw new UsageError(`'${arg}' is not of the form --key=value; ${valid}`);
    }
  }
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: Object.fromEntries(
        Object.keys(specs).map((k) => [k, { type: "string" as const }]),
      ),
      strict: true,
      allowPositionals: options.allowPositionals ?? false,
    });
  } catch (e) {
    const unknown = /'(--[^']+)'/.exec((e as Error).message)?.[1];
    if (unknown) throw new UsageError(`unknown flag '${unknown}'; ${valid}`);
    throw new UsageError(
      `unexpected argument: ${(e as Error).message.split("\n")[0]}`,
    );
  }
  const values: Record<string, number | boolean | string> = {};
  const given = new Set<keyof S & string>();
  for (const [key, spec] of Object.entries(specs)) {
    const text = (parsed.values as Record<string, string | undefined>)[key];
    if (text === undefined) {
      values[key] = spec.default;
    } else {
      values[key] = convert(key, text, spec);
      given.add(key);
    }
  }
  return { values: values as FlagValues<S>, given, positionals: parsed.positionals };
}
