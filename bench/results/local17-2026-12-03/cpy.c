// cpy W_MIB SECS: two threads, each copying 64 KiB chunks walking a W-byte
// region (one writes into it from a fixed 64 KiB source, the other reads
// out of its own region into a fixed 64 KiB destination), like a sender
// and a receiver on rings whose total is W each. Prints GB/s per thread.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
static size_t W; static double secs;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *run(void *arg){
  int into=(long)arg; char *r=mmap(0,W,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
  memset(r,1,W); char *b=aligned_alloc(4096,65536); memset(b,2,65536);
  size_t off=0,n=0; double t0=now(),t;
  do{ for(int k=0;k<64;k++){ if(into) memcpy(r+off,b,65536); else memcpy(b,r+off,65536); off+=65536; if(off>=W) off=0; n++; } t=now(); } while(t-t0<secs);
  double *g=malloc(sizeof *g); *g=n*65536.0/(t-t0)/1e9; return g;
}
int main(int c,char**v){ W=(size_t)(atof(v[1])*1048576); secs=atof(v[2]);
  pthread_t a,b; void *ga,*gb; pthread_create(&a,0,run,(void*)1L); pthread_create(&b,0,run,(void*)0L);
  pthread_join(a,&ga); pthread_join(b,&gb);
  printf("W=%s MiB write-into %.1f GB/s read-out %.1f GB/s sum %.1f\n",v[1],*(double*)ga,*(double*)gb,*(double*)ga+*(double*)gb); }
