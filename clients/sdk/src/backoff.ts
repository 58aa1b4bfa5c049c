/** Reconnect delays: exponential growth with jitter, so a fleet of clients does not reconnect in step. */

export interface BackoffOptions {
  /** Delay cap of the first retry, ms. Default 250. */
  initialMs?: number;
  /** Largest delay, ms. Default 30 000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): "equal jitter", uniformly drawn from
 * [cap/2, cap] where cap = min(maxMs, initialMs · factor^attempt). Never zero, never above the cap.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialMs ?? 250;
  const max = options.maxMs ?? 30_000;
  const factor = options.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.max(0, Math.min(attempt, 64))));
  return Math.round(cap / 2 + random() * (cap / 2));
}
