// The worker's logging: a tiny interface so applications can route it to
// their own logger, and a default that writes lines to stderr.

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

function formatFields(fields: LogFields | undefined): string {
  if (fields === undefined) return "";
  return Object.entries(fields)
    .map(([key, value]) => {
      const text = typeof value === "string" ? value : value instanceof Error ? value.message : JSON.stringify(value);
      return ` ${key}=${/[\s"=]/.test(text ?? "") ? JSON.stringify(text) : text}`;
    })
    .join("");
}

/**
 * Writes "TIME LEVEL message key=value" lines to stderr, from `level` up.
 * The default level comes from CONVEYOR_LOG_LEVEL, else "info".
 */
export function stderrLogger(level?: LogLevel): Logger {
  const configured = level ?? (process.env["CONVEYOR_LOG_LEVEL"] as LogLevel | undefined) ?? "info";
  const min = RANK[configured] ?? RANK.info;
  const write = (at: Exclude<LogLevel, "silent">) => (message: string, fields?: LogFields) => {
    if (RANK[at] < min) return;
    process.stderr.write(`${new Date().toISOString()} ${at.toUpperCase().padEnd(5)} conveyor: ${message}${formatFields(fields)}\n`);
  };
  return { debug: write("debug"), info: write("info"), warn: write("warn"), error: write("error") };
}

/** Discards everything. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
