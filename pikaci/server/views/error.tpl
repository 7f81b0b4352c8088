% rebase('layout', title=title, logged_in=logged_in)
<h1>{{title}}</h1>
<p class="error-message">{{message}}</p>
<p><a href="/">Back to the runs</a></p>
