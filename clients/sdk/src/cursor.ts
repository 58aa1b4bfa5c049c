/**
 * Cursor stores: where the client keeps what it has seen, so that a reconnect (or a reload, with a
 * persistent store) can ask the server for exactly the events it missed with `join{room, since, epoch}`.
 *
 * A seq means something only with its epoch; a store holds one epoch and, per room, the last seq
 * delivered to the application. It also records the user, so a store shared by two accounts in the
 * same browser never mixes their cursors.
 */

export interface CursorState {
  user: string | null;
  epoch: string | null;
  rooms: Record<string, number>;
}

export interface CursorStore {
  load(): CursorState | Promise<CursorState>;
  save(state: CursorState): void | Promise<void>;
}

export function emptyCursorState(): CursorState {
  return { user: null, epoch: null, rooms: {} };
}

function cloneState(state: CursorState): CursorState {
  return { user: state.user, epoch: state.epoch, rooms: { ...state.rooms } };
}

/** Keeps cursors for the life of the process (the default): recovery across reconnects, not reloads. */
export class MemoryCursorStore implements CursorStore {
  #state: CursorState = emptyCursorState();
  load(): CursorState {
    return cloneState(this.#state);
  }
  save(state: CursorState): void {
    this.#state = cloneState(state);
  }
}

/** The part of the Web Storage API the store uses (so tests can pass a fake). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Keeps cursors in `localStorage` (or any Web Storage) under one key, across reloads. */
export class LocalStorageCursorStore implements CursorStore {
  readonly key: string;
  #storage: StorageLike;

  constructor(key = "chat.cursors", storage?: StorageLike) {
    this.key = key;
    const fallback = (globalThis as { localStorage?: StorageLike }).localStorage;
    if (!storage && !fallback) throw new Error("LocalStorageCursorStore: no localStorage here; pass a storage");
    this.#storage = storage ?? (fallback as StorageLike);
  }

  load(): CursorState {
    try {
      const raw = this.#storage.getItem(this.key);
      if (!raw) return emptyCursorState();
      const parsed = JSON.parse(raw) as Partial<CursorState>;
      const rooms: Record<string, number> = {};
      if (parsed.rooms && typeof parsed.rooms === "object") {
        for (const [room, seq] of Object.entries(parsed.rooms)) {
          if (typeof seq === "number" && Number.isFinite(seq) && seq >= 0) rooms[room] = seq;
        }
      }
      return {
        user: typeof parsed.user === "string" ? parsed.user : null,
        epoch: typeof parsed.epoch === "string" ? parsed.epoch : null,
        rooms,
      };
    } catch {
      return emptyCursorState();
    }
  }

  save(state: CursorState): void {
    try {
      this.#storage.setItem(this.key, JSON.stringify(state));
    } catch {
      // Storage full or disabled: recovery falls back to what the session remembers.
    }
  }

  clear(): void {
    this.#storage.removeItem(this.key);
  }
}
