/* Monotonic time and jitter for timers and back-off. */
#ifndef EAV_COMMON_CLOCK_H
#define EAV_COMMON_CLOCK_H

#include <stdint.h>
#include <sys/time.h>

int64_t	clock_ms(void);
int	clock_jitter(int);
void	clock_seed(void);
struct timeval	clock_tv(int64_t);

#endif
