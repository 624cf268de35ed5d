// Namespaces: every call of a Client and a Worker's session act in one.
// Tasks, queues, workers, schedules and idempotency keys of one namespace are
// invisible from the others.

/** The environment variable of the namespace, used when the `namespace` option is not given. */
export const NAMESPACE_ENV = "CONVEYOR_NAMESPACE";

/** The namespace of calls that name none (the wire's ""). */
export const DEFAULT_NAMESPACE = "default";

/** What the server accepts: 1 to 100 of [A-Za-z0-9_.-] ("" is the default namespace). */
const VALID = /^[A-Za-z0-9_.-]{1,100}$/;

/**
 * The namespace to send: `option` when given (even ""), else
 * $CONVEYOR_NAMESPACE when set and not empty, else "" (the server's
 * "default"). Throws RangeError, naming where it came from, for a name the
 * server would refuse.
 */
export function resolveNamespace(option: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = option === undefined;
  const namespace = fromEnv ? (env[NAMESPACE_ENV] ?? "") : option;
  if (typeof namespace !== "string") throw new TypeError(`namespace must be a string, not ${typeof namespace}`);
  if (namespace !== "" && !VALID.test(namespace)) {
    const source = fromEnv ? ` (from ${NAMESPACE_ENV})` : "";
    throw new RangeError(
      `invalid namespace ${JSON.stringify(namespace)}${source}: a namespace is 1 to 100 characters of A-Z, a-z, 0-9, "_", "." and "-"`,
    );
  }
  return namespace;
}
