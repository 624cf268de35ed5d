"""Dining philosophers with several concurrency keys.

Five philosophers sit around a table with a fork between each two. The forks
are concurrency keys `fork:0` .. `fork:4` with limit 1, and philosopher i's
meal (a task `eat`) needs forks i and (i + 1) % 5. The server starts a meal
only when both of its forks are free and takes them together, so nobody holds
one fork while waiting for the other: no deadlock, whatever the order.

Submits 5 meals per philosopher, runs a worker (5 slots) in this process until
all are eaten, then prints the meals per philosopher, the most philosophers
seen eating at once (at most 2: five forks make two pairs) and whether a fork
was ever held by two.

Env: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_QUEUE (default
"philosophers").
"""

import os
import sys
import threading
import time

from conveyor import Conveyor

PHILOSOPHERS = 5
MEALS = 5

queue = os.environ.get("CONVEYOR_QUEUE") or "philosophers"
app = Conveyor(os.environ.get("CONVEYOR_ADDR") or "http://127.0.0.1:50051")

lock = threading.Lock()
held: set[int] = set()  # forks in use now
eating = 0
most_eating = 0
fork_clash = False


def forks(i: int) -> list[int]:
    return [i, (i + 1) % PHILOSOPHERS]


@app.task(name="eat", queue=queue)
def eat(i: int) -> int:
    global eating, most_eating, fork_clash
    with lock:
        fork_clash |= any(fork in held for fork in forks(i))
        held.update(forks(i))
        eating += 1
        most_eating = max(most_eating, eating)
    time.sleep(0.05)
    with lock:
        held.difference_update(forks(i))
        eating -= 1
    return i


def main() -> int:
    worker = app.worker(concurrency=PHILOSOPHERS, queues=[queue])
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        meals = [
            eat.apply_async([i], concurrency_keys=[(f"fork:{fork}", 1) for fork in forks(i)])
            for _ in range(MEALS)
            for i in range(PHILOSOPHERS)
        ]
        eaten = [0] * PHILOSOPHERS
        for meal in meals:
            eaten[meal.get(timeout=60)] += 1
    finally:
        worker.stop()
        thread.join()
    for i, count in enumerate(eaten):
        print(f"philosopher {i} ate {count} meals")
    print(f"most eating at once: {most_eating}")
    print(f"fork held by two at once: {'yes' if fork_clash else 'never'}")
    return 0 if most_eating <= 2 and not fork_clash else 1


if __name__ == "__main__":
    sys.exit(main())
