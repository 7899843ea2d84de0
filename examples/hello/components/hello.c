/* The example guest: a wasip1 program built with `make guests`.
 *
 * It runs as a plain WASI command today; the serving actions (home, greet)
 * arrive with the guest ABI (docs/abi.md) and the HTTP listeners. */
#include <stdio.h>

int main(void) {
    puts("hello from a rusm guest");
    return 0;
}
